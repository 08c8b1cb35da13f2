"""The Apache Beam data preparation (sketch_tf/data/beam.py) against the single-process path.

DirectRunner with 2 worker processes (multi_processing mode), on tiny inputs generated here: a
Quick, Draw! ndjson folder with a line that is not JSON and an empty drawing, and an image
folder tree with a non-image file, written with `test_fraction` (two parts) and style labels.
Records are compared as a multiset of parsed features, manifests up to shard layout.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import tfrecord
from sketch_tf.data.sources import BadInputError, prepare

pytest.importorskip("apache_beam", reason="optional extra: pip install -e '.[beam]'")

from sketch_tf.data import beam  # noqa: E402

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=2"]
BEAM_ARGS += ["--direct_running_mode=multi_processing"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_quickdraw(root, n_per_class=9):
    """One ndjson file per class (ant, bee, cat); bee.ndjson has a line that is not JSON and
    a drawing without strokes."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        lines = []
        for i in range(n_per_class):
            strokes = [[rng.integers(0, 256, 6).tolist(), rng.integers(0, 256, 6).tolist()]]
            lines.append(json.dumps({"word": name, "key_id": f"{name}{i}", "drawing": strokes}))
        if name == "bee":
            lines.insert(2, '{"word": "bee", "drawing": [[[1, 2], [3')  # not JSON
            lines.insert(5, '{"word": "bee", "drawing": []}')
        (root / f"{name}.ndjson").write_text("\n".join(lines) + "\n")
    return root


def write_folders(root):
    """<root>/{photo,sketch}/{"a b","cé"}/*.png plus one file that is not an image."""
    for domain in ("photo", "sketch"):
        for name in ("a b", "cé"):
            for i in range(6):
                path = root / domain / name / f"n{i}-1.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (12, 10), 30 * i + (domain == "photo")).save(path)
    (root / "sketch" / "a b" / "n9.png").write_bytes(b"not a png")
    return root


def parsed_records(dataset_dir):
    """Sorted list of each record's features (name -> values), as canonical strings."""
    out = []
    for record in tfrecord.record_dataset(dataset_dir):
        example = tf.train.Example.FromString(record.numpy())
        features = {}
        for key, feature in sorted(example.features.feature.items()):
            kind = feature.WhichOneof("kind")
            features[key] = [repr(v) for v in getattr(feature, kind).value]
        out.append(json.dumps(features, sort_keys=True))
    return sorted(out)


def comparable(manifest):
    """A manifest without what differs between the two paths: creation time and shard
    layout (kept: records and bytes summed per shard group)."""
    manifest = dict(manifest)
    manifest.pop("created")
    groups = {}
    for shard in manifest.pop("shards"):
        key = f"{shard['domain']}/{shard['class']}"
        records, size = groups.get(key, (0, 0))
        groups[key] = (records + shard["records"], size + shard["bytes"])
    manifest["shard_groups"] = groups
    return manifest


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both paths on both inputs: {name: (single-process dir, beam dir, beam manifest)}."""
    tmp = tmp_path_factory.mktemp("beam")
    qd = write_quickdraw(tmp / "qd")
    fo = write_folders(tmp / "fo")
    options = {
        "quickdraw": dict(size=32, skip_bad=True, shard_bytes=2000),
        "folders": dict(skip_bad=True, test_fraction=0.3, style_domains=["photo"]),
    }
    out = {}
    for name, root in (("quickdraw", qd), ("folders", fo)):
        single = tmp / f"{name}_single"
        prepare(name, root, single, **options[name])
        manifest = beam.prepare_beam(name, root, tmp / f"{name}_beam", BEAM_ARGS, **options[name])
        out[name] = (single, tmp / f"{name}_beam", manifest)
    return out


@pytest.mark.slow
def test_quickdraw_beam_equals_single_process(converted):
    single, beamed, manifest = converted["quickdraw"]
    assert manifest == tfrecord.read_manifest(beamed)
    assert comparable(manifest) == comparable(tfrecord.read_manifest(single))
    assert manifest["num_records"] == 27 and manifest["skipped"]["count"] == 2
    reasons = [item["reason"] for item in manifest["skipped"]["items"]]
    assert "bee.ndjson:3: invalid JSON" in reasons[0] and "bee.ndjson:6" in reasons[1]
    assert parsed_records(beamed) == parsed_records(single)
    tfrecord.list_shards(beamed, verify=True)  # every shard's sha256 matches the manifest
    print(f"quickdraw: {manifest['num_records']} records, {len(manifest['shards'])} shards, "
          f"{manifest['skipped']['count']} skipped; equal to the single-process path")  # fmt: skip


@pytest.mark.slow
def test_folders_beam_equals_single_process_in_both_parts(converted):
    single, beamed, manifests = converted["folders"]
    assert sorted(manifests) == ["test", "train"]
    skipped = 0
    for part in ("train", "test"):
        expected = tfrecord.read_manifest(single / part)
        assert comparable(manifests[part]) == comparable(expected)
        assert parsed_records(beamed / part) == parsed_records(single / part)
        tfrecord.list_shards(beamed / part, verify=True)
        skipped += manifests[part]["skipped"]["count"]
    assert skipped == 1
    assert sorted(os.listdir(beamed.parent)) == sorted(
        ["qd", "fo", "quickdraw_single", "quickdraw_beam", "folders_single", "folders_beam"]
    )  # no temp folder left


@pytest.mark.slow
def test_bad_input_without_skip_bad_fails_naming_it_and_writes_nothing(converted, tmp_path):
    qd = converted["quickdraw"][0].parent / "qd"
    with pytest.raises(BadInputError, match=r"bee\.ndjson:3: invalid JSON.*--skip_bad"):
        beam.prepare_beam("quickdraw", qd, tmp_path / "out", BEAM_ARGS, size=32)
    assert os.listdir(tmp_path) == []  # neither the dataset nor a temp folder


def test_sources_without_a_beam_pipeline_and_unknown_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no Beam pipeline"):
        beam.prepare_beam("sketchzooms", tmp_path, tmp_path / "out", BEAM_ARGS)
    assert beam.unknown_pipeline_args(BEAM_ARGS + ["--project=p", "--region", "r"]) == []
    assert beam.unknown_pipeline_args(["--direct_num_workerz=2"]) == ["--direct_num_workerz=2"]


def test_prepare_data_passes_only_beam_options_with_runner(tmp_path):
    qd = write_quickdraw(tmp_path / "qd", n_per_class=2)
    cmd = [sys.executable, "prepare_data.py", "--source=quickdraw", f"--root={qd}"]
    cmd += [f"--out={tmp_path / 'out'}", "--runner=DirectRunner", "--direct_num_workerz=2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--direct_num_workerz=2" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
