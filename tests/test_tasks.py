"""The family contract: the registry is the family list, every family package has the same
files, and generic code never names a family."""

import re

from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train import tasks

GENERIC_FILES = [
    "sketch_tf/train/loop.py",
    "sketch_tf/train/run.py",
    "sketch_tf/train/tasks.py",
    "sketch_tf/export/serving.py",
    "sketch_tf/export/inputs.py",
    "sketch_tf/export/warmup.py",
    "sketch_tf/export/gallery.py",
    "sketch_tf/search.py",
    "sketch_tf/data/pipeline.py",
    "sketch_tf/models/backbones.py",
    "sketch_tf/models/layers.py",
    "sketch_tf/models/towers.py",
    "sketch_tf/models/edges.py",
    "sketch_tf/shape_buckets.py",
    "retrieve.py",
    "train.py",
    "evaluate.py",
    "export.py",
    "main_job.py",
]


def test_families_are_the_registry_and_share_one_layout():
    names = tasks.family_names()
    assert {"zooms", "zs_sbir", "style_sbir"} <= set(names)
    for name in names:
        folder = PROJECT_ROOT / "sketch_tf" / "families" / name
        for module in ("task.py", "evaluate.py", "serving.py"):
            assert (folder / module).is_file(), f"{name}: {module} missing"
        task_class = tasks.get_task_class(name)
        assert task_class.name == name
        assert task_class.headlines, f"{name} declares no headline metrics for the main job"
        for headline in task_class.headlines:
            assert headline.baselines, f"{name}: {headline.label} has no baseline"


def test_generic_code_names_no_family():
    pattern = re.compile("|".join(re.escape(n) for n in tasks.family_names()))
    for path in GENERIC_FILES:
        text = (PROJECT_ROOT / path).read_text()
        hits = [line for line in text.splitlines() if pattern.search(line)]
        assert not hits, f"{path} names a family: {hits[:3]}"
