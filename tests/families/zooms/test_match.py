"""match.py and sketch_tf.families.zooms.match: agreement figure by hand, run_match outputs
for every method, the absl command end to end, and the real SketchZooms example pair (shared
data)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sketch_tf.families.zooms import match as zooms_match
from sketch_tf.families.zooms.task import ZoomsTask
from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train import loop
from tests.families.zooms.test_task import load_config


def test_mutual_nn_agreement_by_hand():
    a = np.array([[0.0], [1.0], [5.0]])
    b = np.array([[0.1], [1.2], [9.0]])
    # ours: mutual pairs (0,0), (1,1); b2's nearest in A is a2 and a2's nearest in B is b1
    # (|5-1.2| < |5-9|) -> not mutual. Reference: B points in another order.
    ref_a = np.array([[0.0], [1.0], [5.0]])
    ref_b = np.array([[1.1], [0.1], [5.1]])  # mutual: (0,1), (1,0), (2,2)
    got = zooms_match.mutual_nn_agreement(a, b, ref_a, ref_b)
    assert (got["ours"], got["reference"], got["common"]) == (2, 3, 0)
    assert got["agreement"] == 0.0 and got["precision"] == 0.0
    # Nearest neighbours: ours [0, 1, 1], reference [1, 0, 2] -> no agreement.
    assert got["nn_agreement"] == 0.0
    same = zooms_match.mutual_nn_agreement(a, b, a * 2.0, b * 2.0)
    assert (same["agreement"], same["precision"], same["nn_agreement"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="points"):
        zooms_match.mutual_nn_agreement(a, b, a[:2], b)


def _drawing(path, shift):
    img = np.full((80, 80, 3), 255, np.uint8)
    img[15 + shift : 17 + shift, 10:70] = 0
    img[15:70, 40 + shift : 42 + shift] = 0
    img[60:62, 20:60] = 0
    Image.fromarray(img).save(path)
    return img


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A zooms workdir with an (untrained) tiny model checkpoint and its config.json."""
    base = tmp_path_factory.mktemp("match")
    config = load_config("synthetic_smoke")
    config.data.image_size = 64
    config.model.update(backbone_widths=(8, 16), head_hidden=32)
    config.zooms.view_size = 16
    task = ZoomsTask(config)
    workdir = str(base / "run")
    loop.write_config(config, workdir)
    state = loop.build_state(task)
    import tensorflow as tf

    tf.train.CheckpointManager(state.checkpoint, os.path.join(workdir, "ckpt"), 1).save()
    _drawing(base / "a.png", 0)
    _drawing(base / "b.png", 3)
    return base, task, state.models["zooms"]


@pytest.mark.parametrize("method", ["nn", "mutual_nn", "hungarian", "sinkhorn"])
def test_run_match_writes_json_and_picture(run_dir, method):
    base, task, model = run_dir
    out = str(base / f"out_{method}")
    res = zooms_match.run_match(
        task, model, str(base / "a.png"), str(base / "b.png"), out, method=method, radius=6.0
    )
    with open(out + ".json") as f:
        payload = json.load(f)
    na, nb = payload["num_points_a"], payload["num_points_b"]
    assert na > 5 and nb > 5
    pairs = np.array([[m["a"], m["b"]] for m in payload["matches"]])
    assert len(pairs) > 0
    assert pairs[:, 0].max() < na and pairs[:, 1].max() < nb
    if method == "nn":
        assert len(pairs) == na
    if method in ("mutual_nn", "hungarian", "sinkhorn"):
        assert len(set(pairs[:, 1])) == len(pairs)  # one-to-one
    m = payload["matches"][0]
    np.testing.assert_allclose(m["distance"], np.linalg.norm(
        res["_desc_a"][m["a"]] - res["_desc_b"][m["b"]]), rtol=1e-5)  # fmt: skip
    picture = Image.open(out + ".png")
    assert picture.size == (80 + 16 + 80, 80)


def test_match_command_with_npy_points(run_dir):
    base, *_ = run_dir
    pts = np.array([[40.5, 16.0], [41.0, 40.0], [30.0, 61.0]], np.float32)
    np.save(base / "pa.npy", pts)
    np.save(base / "pb.npy", pts + [3.0, 3.0])
    # Reference descriptors that mutually match point i of A with point i of B.
    np.save(base / "ra.npy", np.eye(3, 4, dtype=np.float32))
    np.save(base / "rb.npy", np.eye(3, 4, dtype=np.float32) + 0.01)
    out = str(base / "cli")
    cmd = [sys.executable, os.path.join(PROJECT_ROOT, "match.py"), f"--workdir={base / 'run'}",
           f"--image_a={base / 'a.png'}", f"--image_b={base / 'b.png'}",
           f"--points_a={base / 'pa.npy'}", f"--points_b={base / 'pb.npy'}",
           f"--reference_a={base / 'ra.npy'}", f"--reference_b={base / 'rb.npy'}",
           "--method=hungarian", f"--output={out}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out + ".json") as f:
        payload = json.load(f)
    assert len(payload["matches"]) == 3 and payload["method"] == "hungarian"
    agree = payload["reference_agreement"]
    assert agree["reference"] == 3 and agree["chance_nn"] == pytest.approx(1 / 3)
    assert "reference: 3 mutual-NN matches" in proc.stdout
    bad = subprocess.run(cmd[:-1] + ["--output=" + out, "--method=nope"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert bad.returncode != 0


def test_reference_of_wrong_length_is_refused_before_writing(run_dir, tmp_path):
    base, task, model = run_dir
    pts = np.array([[40.5, 16.0], [41.0, 40.0], [30.0, 61.0]], np.float32)
    with pytest.raises(ValueError, match=r"reference descriptors of B: expected \[3, D\]"):
        zooms_match.run_match(
            task, model, str(base / "a.png"), str(base / "b.png"), str(tmp_path / "r"),
            points_a=pts, points_b=pts, reference=(np.zeros((3, 4)), np.zeros((2, 4))),
        )  # fmt: skip
    assert not os.path.exists(tmp_path / "r.json")


def test_sketchzooms_examples_agreement(run_dir, shared_data, tmp_path):
    base, task, model = run_dir
    ex = shared_data / "sketchzooms_examples"
    pa = zooms_match.load_points(str(ex / "1_img_sample.npy"))
    pb = zooms_match.load_points(str(ex / "3_img_sample.npy"))
    res = zooms_match.run_match(
        task, model, str(ex / "1_img.png"), str(ex / "3_img.png"), str(tmp_path / "ex"),
        method="mutual_nn", points_a=pa, points_b=pb,
    )  # fmt: skip
    ref_a = np.load(ex / "1_img_sketchzooms_alexnet_triplet.npy")
    ref_b = np.load(ex / "3_img_sketchzooms_alexnet_triplet.npy")
    agree = zooms_match.mutual_nn_agreement(res["_desc_a"], res["_desc_b"], ref_a, ref_b)
    assert agree["reference"] > 0
    for key in ("agreement", "precision", "nn_agreement"):
        assert 0.0 <= agree[key] <= 1.0
    assert os.path.getsize(tmp_path / "ex.png") > 0


# ---- dense sampling (the original: Poisson disk, r = 5 px, inside the filled silhouette) ----
def _square_outline(size=64, a=12, b=52):
    img = np.full((size, size, 3), 1.0, np.float32)
    img[a : a + 2, a:b] = img[b - 2 : b, a:b] = img[a:b, a : a + 2] = img[a:b, b - 2 : b] = 0.0
    return img


def test_default_sampling_fills_the_stroke_silhouette_at_5px():
    assert zooms_match.DEFAULT_RADIUS == 5.0
    img = _square_outline()
    pts = zooms_match.sample_points(img)
    inside = (pts[:, 0] > 16) & (pts[:, 0] < 48) & (pts[:, 1] > 16) & (pts[:, 1] < 48)
    assert inside.sum() > 20  # the interior of the closed outline, not only its strokes
    assert not ((pts < 11).any(axis=1) | (pts > 53).any(axis=1)).any()  # nothing outside it
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    assert d.min() >= 5.0


def test_mask_files_restrict_the_sample(tmp_path):
    img = _square_outline()
    mask = np.full((64, 64), 255, np.uint8)
    mask[30:40, 30:40] = 0  # dark = inside, as the SketchZooms example masks
    Image.fromarray(mask).save(tmp_path / "m.png")
    m = zooms_match.load_mask(str(tmp_path / "m.png"), (64, 64))
    assert m.sum() == 100 and m[35, 35]
    pts = zooms_match.sample_points(img, mask=m)
    assert len(pts) > 0 and ((pts >= 30) & (pts <= 40)).all()
    with pytest.raises(ValueError, match=r"m.png: size \(64, 64\) differs"):
        zooms_match.load_mask(str(tmp_path / "m.png"), (32, 32))


def test_example_masks_hold_the_original_samples(shared_data):
    ex = shared_data / "sketchzooms_examples"
    img = zooms_match.load_drawing(str(ex / "1_img.png"))
    mask = zooms_match.load_mask(str(ex / "1_img_mask.png"), img.shape[:2])
    sample = np.load(ex / "1_img_sample.npy")  # (x, y) of the original's points
    assert mask[sample[:, 1], sample[:, 0]].mean() > 0.95
    ours = zooms_match.sample_points(img, mask=mask)
    assert mask[ours[:, 1].astype(int), ours[:, 0].astype(int)].all()
