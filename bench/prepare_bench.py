"""Quick, Draw! conversion throughput: single process vs Apache Beam DirectRunner, 2 workers.

The bench writes a Quick, Draw! ndjson folder of synthetic drawings (`--classes` files of
`--drawings / --classes` lines; each drawing 3-6 strokes of 8-24 points, a random walk in the
0..255 box, like the simplified dataset) and converts it twice into `--size` px records:
- single process: `sources.prepare("quickdraw", ...)` (what `prepare_data.py` runs);
- Beam: `beam.prepare_beam("quickdraw", ...)` on DirectRunner with `--direct_num_workers=2
  --direct_running_mode=multi_processing` (what `prepare_data.py --runner=DirectRunner` runs).
Both times are wall clock of the whole call, so Beam's figure includes starting its worker
processes (a few seconds, each worker imports TensorFlow) and the final commit step.

    PYTHONPATH=. python bench/prepare_bench.py [--drawings 12000 --classes 6 --size 256]

Last line: {"single_process_records_per_s", "beam_direct_2_workers_records_per_s",
"ratio_vs_single_process" (beam / single), "records", "cpu", "cpu_model", "matmul_gflops", ...}.

Measured (2-core AMD EPYC, AVX-512, load 0.5-1.4, size 256, one run each):
- default (12,000 drawings): single 260.0/s (46.2 s), Beam 374.0/s (32.1 s), ratio 1.44;
- `--drawings 3000`: single 239.7/s (12.5 s), Beam 174.0/s (17.2 s), ratio 0.73: the ~7 s of
  starting 2 worker processes (each imports TensorFlow) and the pipeline outweigh the gain.
Both cores are busy with Beam, so on 2 cores the ratio cannot exceed 2; the point of the Beam
path is more machines (Dataflow / Flink / Spark), not this box.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from bench_args import cpu_description, int_flags, machine_figures  # noqa: E402

from sketch_tf.data.beam import prepare_beam  # noqa: E402
from sketch_tf.data.sources import prepare  # noqa: E402

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=2"]
BEAM_ARGS += ["--direct_running_mode=multi_processing"]


def write_ndjson(root: Path, drawings: int, classes: int, seed: int = 0) -> int:
    """Writes `classes` ndjson files with `drawings` lines in all; returns the line count."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    per_class = drawings // classes
    for c in range(classes):
        lines = []
        for i in range(per_class):
            strokes = []
            for _ in range(int(rng.integers(3, 7))):
                n = int(rng.integers(8, 25))
                xy = np.clip(
                    rng.integers(0, 256, 2) + np.cumsum(rng.normal(0, 12, (n, 2)), 0), 0, 255
                )
                strokes.append([xy[:, 0].astype(int).tolist(), xy[:, 1].astype(int).tolist()])
            lines.append(
                json.dumps({"word": f"class{c}", "key_id": f"{c}-{i}", "drawing": strokes})
            )
        (root / f"class{c}.ndjson").write_text("\n".join(lines) + "\n")
    return per_class * classes


def main():
    args = int_flags(__doc__.splitlines()[0], drawings=12000, classes=6, size=256)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = write_ndjson(tmp / "qd", args.drawings, args.classes)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        single = prepare("quickdraw", tmp / "qd", tmp / "single", size=args.size)
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        beamed = prepare_beam("quickdraw", tmp / "qd", tmp / "beam", BEAM_ARGS, size=args.size)
        beam_s = time.perf_counter() - t0
        load_after = os.getloadavg()
    assert single["num_records"] == beamed["num_records"] == n
    single_rate, beam_rate = n / single_s, n / beam_s
    print(
        json.dumps(
            {
                "data": "synthetic quickdraw ndjson",
                "records": n,
                "classes": args.classes,
                "size": args.size,
                "cpu_count": os.cpu_count(),
                "cpu": cpu_description(),
                **machine_figures(),
                "single_process_s": round(single_s, 2),
                "beam_direct_2_workers_s": round(beam_s, 2),
                "single_process_records_per_s": round(single_rate, 1),
                "beam_direct_2_workers_records_per_s": round(beam_rate, 1),
                "ratio_vs_single_process": round(beam_rate / single_rate, 2),
                "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
