"""The family contract: the registry is the family list, every family package has the same
files and plugs in one way (a Task handing out evaluators, a serving object and, for
retrieval, a retrieval object), and generic code never names a family."""

import re

import pytest

from sketch_tf import families
from sketch_tf.export import gallery as gallery_lib
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
    "sketch_tf/models/pretrained.py",
    "sketch_tf/models/layers.py",
    "sketch_tf/models/towers.py",
    "sketch_tf/models/edges.py",
    "sketch_tf/core/shape_buckets.py",
    "retrieve.py",
    "train.py",
    "evaluate.py",
    "export.py",
    "main_job.py",
]


def test_families_are_the_registry_and_share_one_layout():
    names = families.family_names()
    assert {"zooms", "zs_sbir", "style_sbir"} <= set(names)
    for name in names:
        folder = PROJECT_ROOT / "sketch_tf" / "families" / name
        for module in ("config.py", "task.py", "evaluate.py", "serving.py"):
            assert (folder / module).is_file(), f"{name}: {module} missing"
        task_class = families.get_task_class(name)
        assert task_class.name == name
        assert task_class.headlines, f"{name} declares no headline metrics for the main job"
        for headline in task_class.headlines:
            assert headline.baselines, f"{name}: {headline.label} has no baseline"


def test_generic_code_names_no_family():
    pattern = re.compile("|".join(re.escape(n) for n in families.family_names()))
    for path in GENERIC_FILES:
        text = (PROJECT_ROOT / path).read_text()
        hits = [line for line in text.splitlines() if pattern.search(line)]
        assert not hits, f"{path} names a family: {hits[:3]}"


def test_the_family_table_lists_every_family_package():
    folder = PROJECT_ROOT / "sketch_tf" / "families"
    packages = sorted(p.name for p in folder.iterdir() if (p / "__init__.py").is_file())
    assert families.family_names() == packages


def test_no_module_is_loaded_by_name():
    paths = [PROJECT_ROOT / "sketch_tf" / "train" / "tasks.py"]
    paths += sorted((PROJECT_ROOT / "sketch_tf" / "families").rglob("*.py"))
    for path in paths:
        text = path.read_text()
        assert not re.search(r"\b(importlib|pkgutil|__import__)\b", text), path


def test_registered_tasks_and_unknown_names():
    from tests import tiny_task

    assert families.get_task_class("tiny") is tiny_task.TinyTask
    assert {"tiny", *families.family_names()} <= set(families.known_task_names())
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        families.get_task_class("nope")


def test_every_family_hands_out_its_objects():
    for name in families.family_names():
        task_class = families.get_task_class(name)
        assert task_class.evaluator_types, f"{name} declares no evaluator"
        assert task_class.serving_type is not None, f"{name} declares no serving"
        for make in task_class.evaluator_types:
            assert make.__module__ == f"sketch_tf.families.{name}.evaluate", make
        assert task_class.serving_type.__module__ == f"sketch_tf.families.{name}.serving"
        if task_class.retrieval_type is not None:
            assert task_class.retrieval_type.__module__ == f"sketch_tf.families.{name}.serving"


class _Result:
    def __init__(self, name, result):
        self.name, self.result = name, result

    def run(self, models, workdir=None):
        return self.result


def test_evaluate_runs_every_evaluator_and_merges_their_results():
    class Two(tasks.Task):
        def evaluators(self):
            return [
                _Result("a", {"scalars": {"x": 1.0}, "tables": {"t": {"rows": []}}}),
                _Result("b", {"scalars": {"y": 2.0}, "ranks": [1, 2]}),
            ]

    assert Two(None).evaluate({}) == {
        "scalars": {"x": 1.0, "y": 2.0},
        "tables": {"t": {"rows": []}},
        "ranks": [1, 2],
    }
    assert tasks.Task(None).evaluate({}) == {"scalars": {}}

    class Clash(tasks.Task):
        def evaluators(self):
            return [_Result("a", {"scalars": {"x": 1.0}}), _Result("b", {"scalars": {"x": 2.0}})]

    with pytest.raises(ValueError, match="evaluators 'a' and 'b' both give scalars 'x'"):
        Clash(None).evaluate({})


def test_a_task_without_retrieval_is_refused_by_name():
    task = tasks.Task(None)
    assert task.retrieval() is None
    with pytest.raises(ValueError, match="task 'task' serves no retrieval"):
        gallery_lib.required_retrieval(task)
    with pytest.raises(NotImplementedError, match="no serving signatures"):
        task.serving()
