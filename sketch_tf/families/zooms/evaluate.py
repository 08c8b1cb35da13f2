"""Evaluation of the SketchZooms family: PCK / CMC of ours vs the raw-patch and
shape-context baselines on held-out pairs (`ZoomsTask.evaluate`). Two-sketch matching
(`match.py`) lives in `sketch_tf.families.zooms.match`.

Coordinates: points are float (x, y) pixels with the origin at the top-left *corner* of pixel
(0, 0) (the `sketch_tf.data.zooms` / record convention).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sketch_tf.data.options import one_pass
from sketch_tf.eval import correspondence as corr
from sketch_tf.eval import plots
from sketch_tf.models.zooms import describe_points

METHODS = ("ours", "raw_patch", "shape_context")


# ---- baseline descriptors -----------------------------------------------------------------------
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
    ds = one_pass(
        task.pairs("test", False, int(cfg.seed), 256, which).take(int(cfg.eval.max_pairs))
    )
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
