"""Evaluation and matching of the SketchZooms family: PCK / CMC of ours vs the raw-patch and
shape-context baselines on held-out pairs (`ZoomsTask.evaluate`), and two-sketch matching
(`match.py`).

Coordinates: points are float (x, y) pixels with the origin at the top-left *corner* of pixel
(0, 0) (the `sketch_tf.data.zooms` / record convention). Inference resizes a drawing to the
config's `data.image_size` (aspect kept, white pad) exactly as training did, describes the
mapped points, and reports points back in the input image's frame.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline
from sketch_tf.eval import correspondence as corr
from sketch_tf.eval import plots
from sketch_tf.models.zooms import describe_points

METHODS = ("ours", "raw_patch", "shape_context")
#: match.py method names -> matchers of `sketch_tf.eval.correspondence`.
MATCH_METHODS = {
    "nn": "nearest",
    "mutual_nn": "mutual_nn",
    "hungarian": "hungarian",
    "sinkhorn": "sinkhorn",
}


# ---- images and descriptors ---------------------------------------------------------------------
def load_image(path: str) -> np.ndarray:
    """Reads a PNG / JPEG (grey, RGB or RGBA: alpha composited on white) -> float32 [H, W, 3]
    in [0, 1]. Raises FileNotFoundError / ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return pipeline.decode_image(tf.constant(data)).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"{path}: not a decodable PNG/JPEG image ({e})") from e


def fit_image(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize-pad [H, W, 3] to [size, size, 3] -> (image, scale [2], offset [2]); a point p of
    the input lands at p * scale + offset."""
    img, scale, offset = pipeline.resize_pad_geometry(tf.constant(image, tf.float32), size, 1.0)
    return img.numpy(), scale.numpy(), offset.numpy()


def describe_image(task, model, image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Descriptors float32 [N, D] of `points` [N, 2] (input-image pixels) of `image` [H, W, 3]
    in [0, 1], with the task's preprocessing (resize to data.image_size) and zoom geometry."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    img, scale, offset = fit_image(image, int(task.config.data.image_size))
    kw = task.zoom_kwargs(training=False)
    bp = int(task.config.eval.batch_points)
    return describe_points(model, img, pts * scale + offset, zoom_kwargs=kw, batch_points=bp)


def baseline_descriptors(method: str, image: np.ndarray, points: np.ndarray, config) -> np.ndarray:
    """Raw-patch or shape-context descriptors of `points` (record convention) on `image`."""
    pts = np.asarray(points, np.float64) - 0.5  # corr module: origin at the pixel centre
    if method == "raw_patch":
        return corr.raw_patch_descriptors(
            image, pts, int(config.eval.raw_patch_size), int(config.eval.raw_patch_out)
        )
    if method == "shape_context":
        return corr.shape_context_descriptors(image, pts)
    raise ValueError(f"unknown baseline {method!r}; expected raw_patch or shape_context")


# ---- evaluation ---------------------------------------------------------------------------------
def _accumulate(stats, method, desc_a, desc_b, pts_b, thresholds, side, matcher):
    n = len(pts_b)
    pairs = corr.MATCHERS[matcher](desc_a, desc_b)
    pred = corr.predicted_points(pairs, pts_b, n)
    curve = corr.pck_curve(pred, pts_b, side, thresholds)
    ranks, _ = corr.cmc(desc_a, desc_b, np.arange(n))
    s = stats.setdefault(method, {"pck_sum": np.zeros(len(thresholds)), "n": 0, "ranks": []})
    s["pck_sum"] += curve * n
    s["n"] += n
    s["ranks"].append(ranks)


def evaluate_split(task, model, which: str) -> dict[str, Any]:
    """PCK curves and CMC of ours and the two baselines on the test pairs of `which`
    ("seen" or "unseen" categories), over at most `eval.max_pairs` pairs.

    Returns {"pairs": int, "points": int, "thresholds": [T], "methods": {name: {"pck": [T],
    "pck_report": {thr: value}, "cmc": [R]}}, "example": (img_a, img_b, pts_a, pts_b, pairs)}.
    """
    cfg = task.config
    side = int(cfg.data.image_size)
    curve_x = np.linspace(0.0, float(cfg.eval.curve_max), int(cfg.eval.curve_steps))
    thresholds = np.concatenate([curve_x, corr.PCK_REPORT_THRESHOLDS])
    ds = task.pairs("test", False, int(cfg.seed), 256, which).take(int(cfg.eval.max_pairs))
    stats: dict[str, dict] = {}
    n_pairs, example = 0, None
    for ex in ds.as_numpy_iterator():
        keep = ex["mask"]
        pa, pb = ex["points_a"][keep], ex["points_b"][keep]
        if len(pa) < 2:
            continue
        n_pairs += 1
        img_a, img_b = ex["image_a"], ex["image_b"]
        d = describe_points(
            model,
            np.stack([img_a, img_b]),
            np.stack([pa, pb]),
            zoom_kwargs=task.zoom_kwargs(training=False),
            batch_points=int(cfg.eval.batch_points),
        )
        _accumulate(stats, "ours", d[0], d[1], pb, thresholds, side, cfg.eval.matcher)
        if example is None:
            pairs = corr.MATCHERS[cfg.eval.matcher](d[0], d[1])
            example = (img_a, img_b, pa, pb, pairs)
        for m in METHODS[1:]:
            da = baseline_descriptors(m, img_a, pa, cfg)
            db = baseline_descriptors(m, img_b, pb, cfg)
            _accumulate(stats, m, da, db, pb, thresholds, side, cfg.eval.matcher)
    out: dict[str, Any] = {"pairs": n_pairs, "thresholds": curve_x.tolist(), "methods": {}}
    max_rank = int(cfg.eval.cmc_max_rank)
    for m, s in stats.items():
        pck = s["pck_sum"] / max(s["n"], 1)
        ranks = np.concatenate(s["ranks"])
        out["methods"][m] = {
            "pck": pck[: len(curve_x)].tolist(),
            "pck_report": dict(
                zip(corr.PCK_REPORT_THRESHOLDS, pck[len(curve_x) :].tolist(), strict=True)
            ),
            "cmc": [float(np.mean(ranks <= r)) for r in range(1, max_rank + 1)],
        }
        out["points"] = int(s["n"])
    out["example"] = example
    return out


def _image_batch(img) -> np.ndarray:
    return plots.to_array(img)[None]


class ZoomsEvaluator:
    """The `Evaluator` of the SketchZooms family: PCK / CMC of ours vs the raw-patch and
    shape-context baselines on held-out pairs (see the module docstring)."""

    name = "zooms/correspondence"

    def __init__(self, task):
        self.task = task

    def run(self, models, workdir: str | None = None) -> dict[str, Any]:
        """Held-out shapes of seen categories and unseen categories, ours (`models["zooms"]`) vs
        raw-patch vs shape-context. PNG curves go to `<workdir>/eval/`."""
        task, model = self.task, models["zooms"]
        cfg = task.config
        splits = ["seen"] + (["unseen"] if len(tuple(cfg.data.unseen_classes)) else [])
        scalars: dict[str, float] = {}
        images: dict[str, np.ndarray] = {}
        rows, curves = [], {}
        eval_dir = os.path.join(workdir, "eval") if workdir else None
        if eval_dir:
            os.makedirs(eval_dir, exist_ok=True)
        for which in splits:
            res = evaluate_split(task, model, which)
            if res["pairs"] == 0:
                raise ValueError(
                    f"zooms evaluate: no test pairs with >= 2 points for the {which} categories in "
                    f"{cfg.data.root}/test"
                )
            curves[which] = res
            pck_curves, cmc_curves = {}, {}
            for m in METHODS:
                r = res["methods"][m]
                rep = r["pck_report"]
                for thr, v in rep.items():
                    scalars[f"{which}/{m}/pck@{thr * 100:g}%"] = v
                scalars[f"{which}/{m}/cmc@1"] = r["cmc"][0]
                rows.append(
                    [m, which, res["pairs"], res["points"]]
                    + [round(rep[t], 4) for t in corr.PCK_REPORT_THRESHOLDS]
                    + [round(r["cmc"][0], 4), round(r["cmc"][min(4, len(r["cmc"]) - 1)], 4)]
                )
                pck_curves[m] = (np.asarray(res["thresholds"]) * 100.0, r["pck"])
                cmc_curves[m] = (np.arange(1, len(r["cmc"]) + 1), r["cmc"])
            pck_img = plots.curve_plot(
                pck_curves, f"PCK, {which} categories ({res['pairs']} pairs)",
                "threshold (% of image side)", "fraction correct",
            )  # fmt: skip
            cmc_img = plots.curve_plot(
                cmc_curves, f"CMC, {which} categories", "rank", "fraction with true match <= rank"
            )
            img_a, img_b, pa, pb, pairs = res["example"]
            err = np.linalg.norm(pb[pairs[:, 1]] - pb[pairs[:, 0]], axis=1)
            ok = err <= 0.05 * int(cfg.data.image_size)
            match_img = plots.match_picture(img_a, img_b, pa, pb, pairs, correct=ok)
            for name, img in (("pck", pck_img), ("cmc", cmc_img), ("matches", match_img)):
                images[f"{name}_{which}"] = _image_batch(img)
                if eval_dir:
                    plots.save_png(img, os.path.join(eval_dir, f"zooms_{name}_{which}.png"))
        header = ["method", "categories", "pairs", "points"]
        header += [f"PCK@{t * 100:g}%" for t in corr.PCK_REPORT_THRESHOLDS] + ["CMC@1", "CMC@5"]
        curves_json = {
            w: {"thresholds": r["thresholds"], **{m: r["methods"][m]["pck"] for m in METHODS}}
            for w, r in curves.items()
        }
        return {
            "scalars": scalars,
            "images": images,
            "tables": {
                "zooms correspondence (held-out test pairs)": {"header": header, "rows": rows}
            },
            "curves": curves_json,
        }


# ---- matching -----------------------------------------------------------------------------------
def match_descriptors(desc_a, desc_b, method: str) -> np.ndarray:
    """int64 [M, 2] pairs (index in A, index in B) with `method` in MATCH_METHODS."""
    if method not in MATCH_METHODS:
        raise ValueError(f"method must be one of {sorted(MATCH_METHODS)}, got {method!r}")
    return corr.MATCHERS[MATCH_METHODS[method]](desc_a, desc_b)


def mutual_nn_agreement(desc_a, desc_b, ref_a, ref_b) -> dict[str, float]:
    """How our mutual-NN matches agree with those of reference descriptors of the same points.

    Args:
      desc_a, desc_b: our descriptors [Na, D], [Nb, D]; ref_a, ref_b: reference descriptors
        [Na, D'], [Nb, D'] of the same points in the same order.

    Returns:
      {"ours": |M_ours|, "reference": |M_ref|, "common": |M_ours & M_ref|,
       "agreement": common / |M_ref| (share of the reference's matches we reproduce),
       "precision": common / |M_ours|, "nn_agreement": share of A points whose nearest
       neighbour in B is the same for both, "chance_nn": 1 / Nb (random descriptors' expected
       nn_agreement)} — fractions in [0, 1] (0 when a set is empty).
    """
    if len(desc_a) != len(ref_a) or len(desc_b) != len(ref_b):
        raise ValueError(
            f"mutual_nn_agreement: ours {len(desc_a)}/{len(desc_b)} points vs reference "
            f"{len(ref_a)}/{len(ref_b)}"
        )
    ours = {tuple(p) for p in corr.match_mutual_nn(desc_a, desc_b).tolist()}
    ref = {tuple(p) for p in corr.match_mutual_nn(ref_a, ref_b).tolist()}
    common = len(ours & ref)
    nn_ours = corr.match_nearest(desc_a, desc_b)[:, 1]
    nn_ref = corr.match_nearest(ref_a, ref_b)[:, 1]
    return {
        "ours": len(ours),
        "reference": len(ref),
        "common": common,
        "agreement": common / len(ref) if ref else 0.0,
        "precision": common / len(ours) if ours else 0.0,
        "nn_agreement": float(np.mean(nn_ours == nn_ref)) if len(nn_ours) else 0.0,
        "chance_nn": 1.0 / max(len(desc_b), 1),
    }


def load_points(path: str) -> np.ndarray:
    """[N, 2] (x, y) pixel points from a .npy file; raises ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such points file")
    pts = np.load(path)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"{path}: expected finite (x, y) points of shape [N, 2], got {pts.shape}")
    return pts.astype(np.float32)


#: The original's dense sampling radius (px on a 512 px sketch; `utils/sampling.py`).
DEFAULT_RADIUS = 5.0


def load_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Silhouette mask from an image file: bool [H, W], True inside the shape.

    Convention of the SketchZooms example masks (`*_mask.png`): the filled shape is dark on
    white (luminance < 0.5 after compositing alpha on white). Raises ValueError naming the file
    when it is unreadable or its size differs from the sketch's `shape`.
    """
    try:
        ink = corr.ink_map(load_image(path))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"mask {path}: {e}") from e
    if ink.shape != tuple(shape):
        raise ValueError(f"mask {path}: size {ink.shape} differs from its sketch's {tuple(shape)}")
    return ink > 0.5


def stroke_silhouette(image: np.ndarray, threshold: float = 0.5, close_px: int = 2) -> np.ndarray:
    """Filled silhouette of a drawing's strokes, bool [H, W]: stroke pixels closed over gaps
    of up to `2 * close_px` px, then every enclosed region filled (`binary_fill_holes`). The
    stand-in for a silhouette mask when none is given."""
    from scipy import ndimage

    ink = corr.ink_map(image) > threshold
    structure = np.ones((2 * close_px + 1, 2 * close_px + 1), bool)
    closed = ndimage.binary_closing(ink, structure=structure, border_value=0)
    return ndimage.binary_fill_holes(closed | ink)


def sample_points(
    image: np.ndarray, radius: float = DEFAULT_RADIUS, seed: int = 0, mask: np.ndarray | None = None
) -> np.ndarray:
    """Poisson-disk sample (min distance `radius` px) inside `mask` (bool [H, W]), as the
    original samples dense points inside the filled silhouette; without a mask, inside
    `stroke_silhouette(image)`. Returns float32 [N, 2] (x, y) pixel centres (corner
    convention)."""
    if mask is None:
        mask = stroke_silhouette(image)
    return (corr.poisson_disk_points(mask, radius, seed) + 0.5).astype(np.float32)


def run_match(
    task,
    model,
    image_a_path: str,
    image_b_path: str,
    output_prefix: str,
    method: str = "mutual_nn",
    points_a: np.ndarray | None = None,
    points_b: np.ndarray | None = None,
    radius: float = DEFAULT_RADIUS,
    max_lines: int = 200,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    mask_a: str | None = None,
    mask_b: str | None = None,
) -> dict[str, Any]:
    """Two sketches in -> correspondences out: writes `<output_prefix>.json` and
    `<output_prefix>.png` (side by side, one coloured line per match, at most `max_lines`
    drawn) and returns the JSON payload (plus the descriptors under `_desc_a`/`_desc_b`).

    Points not given are a Poisson-disk sample with `radius` px (5, the original's) inside the
    silhouette mask file `mask_a` / `mask_b` (`load_mask`), or inside the filled silhouette of
    the strokes when no mask is given.

    `reference`: optional descriptors ([Na, D'], [Nb, D']) of the same given points from
    another model (e.g. the original SketchZooms' stored ones); the payload then carries
    `"reference_agreement"` (`mutual_nn_agreement`). Shapes and masks are checked before
    anything is computed or written."""
    img_a, img_b = load_image(image_a_path), load_image(image_b_path)

    def points(img, given, mask_path):
        if given is not None:
            return np.asarray(given, np.float32)
        mask = load_mask(mask_path, img.shape[:2]) if mask_path else None
        return sample_points(img, radius, mask=mask)

    pa, pb = points(img_a, points_a, mask_a), points(img_b, points_b, mask_b)
    if len(pa) == 0 or len(pb) == 0:
        raise ValueError(
            f"no points to match ({len(pa)} in {image_a_path}, {len(pb)} in {image_b_path})"
        )
    if reference is not None:
        if points_a is None or points_b is None:
            raise ValueError("reference descriptors need the given points (points_a, points_b)")
        ref_a, ref_b = (np.asarray(r, np.float32) for r in reference)
        for name, ref, pts in (("A", ref_a, pa), ("B", ref_b, pb)):
            if ref.ndim != 2 or len(ref) != len(pts):
                raise ValueError(
                    f"reference descriptors of {name}: expected [{len(pts)}, D] (one row per "
                    f"given point), got shape {ref.shape}"
                )
    da = describe_image(task, model, img_a, pa)
    db = describe_image(task, model, img_b, pb)
    pairs = match_descriptors(da, db, method)
    dist = np.linalg.norm(da[pairs[:, 0]] - db[pairs[:, 1]], axis=1) if len(pairs) else []
    payload = {
        "image_a": image_a_path,
        "image_b": image_b_path,
        "method": method,
        "num_points_a": len(pa),
        "num_points_b": len(pb),
        "matches": [
            {
                "a": int(i),
                "b": int(j),
                "xy_a": pa[i].tolist(),
                "xy_b": pb[j].tolist(),
                "distance": float(d),
            }
            for (i, j), d in zip(pairs.tolist(), dist, strict=True)
        ],  # fmt: skip
    }
    if reference is not None:
        payload["reference_agreement"] = mutual_nn_agreement(da, db, ref_a, ref_b)
    out_dir = os.path.dirname(output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(output_prefix + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    shown = pairs
    if len(pairs) > max_lines:
        shown = pairs[np.linspace(0, len(pairs) - 1, max_lines).astype(int)]
    plots.save_png(plots.match_picture(img_a, img_b, pa, pb, shown), output_prefix + ".png")
    payload["_desc_a"], payload["_desc_b"], payload["_pairs"] = da, db, pairs
    return payload
