"""One config truth per family (`sketch_tf/families/<family>/config.py`), one variant helper
for the config files, and `migrate` for a config.json written by an older version."""

import json
import re

import ml_collections
import pytest

from sketch_tf import families
from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train.config import (
    ConfigError,
    family_config_modules,
    migrate,
    missing_keys,
    project_config_module,
    validate_config,
)

FAMILIES = sorted(family_config_modules())
#: Variants that name files or record folders a user supplies or prepares (absent from a
#: fresh checkout): their only problems may be those.
NEEDS_USER_FILES = {
    ("zs_sbir", "upstream"): ("data.class_embeddings",),
    ("style_sbir", "bam"): ("data.train_sketches", "data.query_sketches"),
    ("style_sbir", "pacs_quickdraw"): ("data.query_sketches",),
}


def _variants():
    for family in FAMILIES:
        for variant in project_config_module(family).VARIANTS:
            yield family, variant


def _stored(config) -> ml_collections.ConfigDict:
    """`config` as `train.py` stores it and `read_config` reads it back (JSON: tuples become
    lists)."""
    return ml_collections.ConfigDict(json.loads(config.to_json()))


def _delete(tree: dict, dotted: str):
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree[part]
    return tree.pop(last)


def test_the_table_lists_every_family():
    assert FAMILIES == families.family_names()
    for family, module in family_config_modules().items():
        assert module.defaults().task == family
        config_file = project_config_module(family)
        # The config file keeps only its variants: its defaults are the family's.
        assert config_file.defaults is module.defaults
        assert not hasattr(config_file, "_base")
        assert families.get_task_class(family).validate_config(
            module.defaults()
        ) == module.validate(module.defaults())


@pytest.mark.parametrize("family,variant", list(_variants()))
def test_every_variant_validates_also_once_stored_and_migrated(family, variant):
    config = project_config_module(family).get_config(variant)
    assert missing_keys(config) == []
    allowed = NEEDS_USER_FILES.get((family, variant), ())
    for candidate in (config, migrate(_stored(config))):
        try:
            validate_config(candidate)
        except ConfigError as e:
            assert allowed and all(any(k in p for k in allowed) for p in e.problems), e
    # A stored config of today's version is what migrate returns.
    assert migrate(_stored(config)).to_json(sort_keys=True) == config.to_json(sort_keys=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_variant_is_one_error_for_every_config_file(family):
    module = project_config_module(family)
    known = ", ".join(module.VARIANTS)
    with pytest.raises(ValueError) as err:
        module.get_config("nope")
    assert str(err.value) == f"configs/{family}.py: unknown variant 'nope'; known: {known}"
    # An empty argument is the default variant.
    assert module.get_config("").to_json() == module.get_config("synthetic").to_json()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_older_config_json_migrates_to_todays(family):
    today = project_config_module(family).get_config("synthetic")
    old = json.loads(today.to_json())
    # Keys an older version did not write (their code fallbacks equalled the defaults),
    # whole run sections, and the old name of data.unseen_classes.
    for key in (
        "train.sync_batch_norm", "train.input_sharding", "train.trainable", "train.kernels", "init"
    ):  # fmt: skip
        _delete(old, key)
    if "unseen_classes" in old["data"]:
        old["data"]["unseen_categories"] = old["data"].pop("unseen_classes")
    family_keys = {
        "zooms": ("data.batching", "loss.num_candidates", "model.backbone_cut"),
        "zs_sbir": ("data.anchor_sampling", "model.photo_edges", "eval.baselines"),
        "style_sbir": ("data.train_sketches", "data.sketch_class_names"),
        "fg_sbir": ("model.backbone", "model.shared"),
    }[family]
    for key in family_keys:
        _delete(old, key)
    stored = ml_collections.ConfigDict(old)
    before = stored.to_json(sort_keys=True)
    with pytest.raises(ConfigError):
        validate_config(stored)  # old keys or missing keys, named
    migrated = migrate(stored)
    assert stored.to_json(sort_keys=True) == before  # the argument is left alone
    assert migrated.to_json(sort_keys=True) == today.to_json(sort_keys=True)
    validate_config(migrated)


@pytest.mark.parametrize("family", FAMILIES)
def test_keys_with_another_old_fallback_keep_what_the_run_trained_with(family):
    module = family_config_modules()[family]
    defaults = module.defaults()
    for key, old_value in module.OLD_RUN_VALUES.items():
        stored = json.loads(defaults.to_json())
        default = _delete(stored, key)
        assert json.loads(json.dumps(old_value)) != default, key  # only where they differ
        migrated = migrate(ml_collections.ConfigDict(stored))
        node = migrated
        for part in key.split("."):
            node = node[part]
        assert node == old_value, key


def test_documented_old_values():
    # The code read these absent keys with fallbacks that differ from today's defaults.
    zs = family_config_modules()["zs_sbir"]
    assert zs.defaults().data.negative_sampling == "inverse_distance"
    assert zs.OLD_RUN_VALUES == {"data.negative_sampling": "softmax"}
    zooms = family_config_modules()["zooms"]
    assert zooms.OLD_RUN_VALUES == {
        "zooms.antialias": False,
        "model.backbone_pooling": "",
        "model.backbone_widths": (),
    }
    assert family_config_modules()["style_sbir"].OLD_RUN_VALUES == {"loss.style_mining": ""}
    assert family_config_modules()["fg_sbir"].OLD_RUN_VALUES == {}


def test_zoom_geometry_of_an_older_zooms_config_moves():
    today = family_config_modules()["zooms"].defaults()
    old = json.loads(today.to_json())
    old["model"]["view_size"] = old["zooms"].pop("view_size")
    old["model"]["num_views"] = len(old["zooms"]["zooms"])
    stored = ml_collections.ConfigDict(old)
    with pytest.raises(ConfigError, match=r"model.view_size was renamed zooms.view_size"):
        validate_config(stored)
    migrated = migrate(stored)
    assert "view_size" not in migrated.model and "num_views" not in migrated.model
    assert migrated.to_json(sort_keys=True) == today.to_json(sort_keys=True)
    old["model"]["num_views"] = 4  # never valid: the old code required len(zooms.zooms)
    with pytest.raises(ConfigError, match=r"model.num_views=4 is gone, and len\(zooms.zooms\)"):
        migrate(ml_collections.ConfigDict(old))


def test_rename_conflicts_and_override_trees():
    today = family_config_modules()["zs_sbir"].defaults()
    old = json.loads(today.to_json())
    old["data"]["unseen_categories"] = ["mug"]
    old["data"]["unseen_classes"] = ["cup"]
    with pytest.raises(ConfigError, match=r"data.unseen_categories=\['mug'\] was renamed"):
        migrate(ml_collections.ConfigDict(old))
    old["data"]["unseen_classes"] = ["mug"]  # the same value twice: the old key goes
    assert "unseen_categories" not in migrate(ml_collections.ConfigDict(old)).data
    # Renamed inside an ablation's overrides too (they must name today's keys).
    old = json.loads(today.to_json())
    old["ablations"]["few"] = {"data": {"unseen_categories": ["mug"]}}
    migrated = migrate(ml_collections.ConfigDict(old))
    assert migrated.ablations.few.to_dict() == {"data": {"unseen_classes": ["mug"]}}


def test_free_form_trees_and_run_sections_are_not_filled_with_a_recipe():
    defaults = family_config_modules()["style_sbir"].defaults()
    stored = json.loads(defaults.to_json())
    stored["model"]["style"]["backbone_kwargs"] = {"cut": "block3"}  # the user's arguments
    for key in ("stage_order", "stages", "ablations"):
        del stored[key]
    migrated = migrate(ml_collections.ConfigDict(stored))
    assert migrated.model.style.backbone_kwargs.to_dict() == {"cut": "block3"}
    # An older folder without stages was one stage: it does not get today's two-stage recipe.
    assert tuple(migrated.stage_order) == () and not migrated.stages and not migrated.ablations


def test_a_task_without_family_config_gets_the_generic_sections():
    from tests import tiny_task

    today = tiny_task.get_config()
    stored = json.loads(today.to_json())
    del stored["train"]["save_input_position"]
    migrated = migrate(ml_collections.ConfigDict(stored))
    assert migrated.train.save_input_position is True
    assert missing_keys(migrated) == []


def test_validation_names_missing_keys_and_migrate():
    config = family_config_modules()["fg_sbir"].defaults()
    del config.model["backbone"]
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert len(err.value.problems) == 1
    assert "config lacks model.backbone" in err.value.problems[0]
    assert "sketch_tf.train.config.migrate" in err.value.problems[0]


def test_every_get_left_in_a_family_task_says_why():
    for path in sorted((PROJECT_ROOT / "sketch_tf" / "families").glob("*/task.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if ".get(" in line:
                commented = "#" in line or lines[i - 1].strip().startswith("#")
                assert commented, f"{path}:{i + 1}: .get( without a comment: {line.strip()}"
        # Config values are read without fallbacks (defaults + migrate give every key).
        text = "\n".join(lines)
        assert not re.search(r"config[\w.]*\.get\(", text), path
