"""The main job on the embedded default data: for each model family, render the synthetic
dataset (if absent), train, evaluate on held-out shapes / unseen categories, export a
SavedModel, and print one results table at the end.

  .venv/bin/python main_job.py                          # all families, the documented CPU budget
  .venv/bin/python main_job.py --families=<family>      # one family (sketch_tf/families/)
  .venv/bin/python main_job.py --smoke                  # a minute-long end-to-end check
  .venv/bin/python main_job.py --jobs=1                 # one family at a time

Everything goes under --workdir (default runs/main): <workdir>/<family>/ is an ordinary run
folder (ckpt/, train/, eval/, export/, config.json), usable with train.py, evaluate.py,
export.py and TensorBoard. A rerun resumes training where it stopped and re-evaluates.

Each family renders its dataset (if absent, or again when rendered with other options than
the config's), trains, evaluates and exports in a fresh process of its own (its log lines
prefixed with the family), costliest first (`Task.main_job_cpu_s`), `--jobs` of them at
once, so that one family's single-threaded work (tracing, saving, evaluation code) overlaps
another's arithmetic on a 2-core CPU. Rendering in the family's process puts it on that
process's share of the CPUs: the family that ends first renders the next family's world
while the costliest one is still training, instead of both waiting for every world up
front. Families sharing a world (one records folder) render it once, under a file lock. A
family's figures depend neither on `--jobs` nor on the other families: no process state
carries over from one family to the next.

SIGTERM / Ctrl-C during a family's training save its checkpoint and stop the whole job (no
evaluation or export of the half-trained model, no later family, no results.json): it says
where it stopped and the command that resumes, and exits with 128 + the signal number.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

from absl import app, flags, logging

from sketch_tf import cli
from sketch_tf.core.files import write_atomic
from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train.config_sections import STRATEGY_NAMES

_STARTED = time.perf_counter()  # TensorFlow is imported later: the job's time counts it

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Root folder of the main job's runs.")
_FAMILIES = flags.DEFINE_list(
    "families", [], "Families to run (default: every family of sketch_tf.families)."
)
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny data and a few steps: checks the whole flow, not the model."
)
_JOBS = flags.DEFINE_integer(
    "jobs",
    0,
    "Families trained, evaluated and exported at once, each in its own process. 0: 2 on a "
    "machine without a GPU where this process may use 2 or more CPUs, else 1 (one at a time).",
)
_FAMILY_RESULT = flags.DEFINE_string(
    "family_result",
    "",
    "Internal (set by the main job for its family processes): run the one family of "
    "--families and write its result as JSON to this file instead of printing a table.",
)
_RENDER_WORKERS = flags.DEFINE_integer(
    "render_workers",
    0,
    "Internal (set by the main job for its family processes): processes rendering the "
    "family's synthetic dataset (0: one per CPU this process may use).",
)
# One machine: every strategy but multi_worker.
_STRATEGY = cli.define_strategy_flag([n for n in STRATEGY_NAMES if n != "multi_worker"])

#: What an interrupted family's note says in the message that stops the job.
_NOT_DONE = "Not evaluated or exported; the later families did not run."


def family_config(family: str, workdir: str, smoke: bool):
    """The family's `configs/<family>.py:synthetic` (`:synthetic_smoke` with --smoke),
    validated, its records root made absolute (smoke data goes under `workdir`)."""
    from sketch_tf.train.config import ConfigError, load_project_config, validate_config

    config = load_project_config(family, "synthetic_smoke" if smoke else "synthetic")
    if smoke:
        # Keep smoke data apart from the real run's data.
        config.data.root = os.path.join(workdir, "records", f"synthetic_{family}")
    try:
        validate_config(config)
    except ConfigError as e:
        cli.fail(f"configs/{family}.py: {e}")
    if not os.path.isabs(config.data.root):
        config.data.root = os.path.join(PROJECT_ROOT, config.data.root)
    return config


def synthetic_options(config) -> tuple[str, dict]:
    """(dataset kind, `prepare_synthetic` options) of the config's synthetic world; the kind
    is `data.synthetic.task` when the family reads a world named like another family, else
    the family."""
    options = config.data.synthetic.to_dict()
    return options.pop("task", config.task), options


def check_records(family: str, config) -> None:
    """Fails (`cli.fail`, naming the manifest) when the family's records folder holds records
    the synthetic world did not write: the main job never renders over them. Run by the main
    process for every family before any family starts."""
    from sketch_tf.data.synthetic.prepare import stale_options

    task, options = synthetic_options(config)
    try:
        stale_options(config.data.root, task, options)
    except ValueError as e:
        cli.fail(f"[{family}] {e}")


def prepare_family(family: str, config, workers: int = 0) -> float:
    """Renders the family's synthetic records unless they are there as the config renders
    them (`ensure_synthetic`: absent, half there or rendered with other options, under a
    lock shared with the families that read the same records) with `workers` processes (0:
    one per CPU); returns the seconds it took (waiting for the lock included; about 0 when
    the records were there, e.g. rendered by another family sharing them)."""
    from sketch_tf.data.synthetic.prepare import ensure_synthetic

    t0 = time.perf_counter()
    task, options = synthetic_options(config)
    try:
        ensure_synthetic(
            task, config.data.root, workers=workers,
            log=lambda line: logging.info("[%s] %s", family, line), **options,
        )  # fmt: skip
    except ValueError as e:
        cli.fail(f"[{family}] {e}")
    return time.perf_counter() - t0


def run_family(family: str, config, run_dir: str, strategy) -> dict:
    """train -> evaluate -> export for one family whose records exist; returns its
    evaluation result with "timings" (train_s, evaluate_s, export_s in wall seconds, the
    same stages' CPU seconds as train_cpu_s, evaluate_cpu_s, export_cpu_s; cpu_s: this
    process's CPU seconds, its start, imports and any rendering it did included), "step",
    "task" and "export", or {"interrupted": {...}} when a signal stopped its training
    (checkpoint saved; nothing evaluated or exported)."""
    from sketch_tf.export.serving import export_run
    from sketch_tf.train.run import load_run, train_run

    timings = {}
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_run(config, run_dir, strategy, log=logging.info)
    timings["train_s"] = time.perf_counter() - t0
    timings["train_cpu_s"] = time.process_time() - c0
    if result.status != "completed":
        return {
            "interrupted": {
                "stop_signal": result.stop_signal,
                "step": result.step,
                "checkpoint": result.checkpoint,
            }
        }

    t0, c0 = time.perf_counter(), time.process_time()
    run = load_run(run_dir, config)
    evaluation, _ = run.evaluate_and_write()
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["evaluate_cpu_s"] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    export_path = export_run(run, os.path.join(run_dir, "export"), result.step, overwrite=True)
    timings["export_s"] = time.perf_counter() - t0
    timings["export_cpu_s"] = time.process_time() - c0
    evaluation["export"] = export_path
    # This process's CPU time (all its threads, its start and imports included).
    timings["cpu_s"] = time.process_time()
    evaluation["timings"] = timings
    evaluation["step"] = result.step
    evaluation["task"] = config.task
    return evaluation


def default_jobs() -> int:
    """`--jobs=0`: 2 on a machine without a GPU where this process may use 2 or more CPUs,
    else 1. More than two families at once only multiplies memory (the gain is overlapping
    one family's single-threaded phases with another's arithmetic), and processes sharing a
    GPU would each reserve all of its memory."""
    import tensorflow as tf

    from sketch_tf.data.synthetic.prepare import default_workers

    if tf.config.list_physical_devices("GPU"):
        return 1
    return 2 if default_workers() >= 2 else 1


class _FamilyProcesses:
    """Runs families in child processes (`main_job.py --family_result`), at most `jobs` at
    once, relaying their output prefixed with the family; SIGTERM / SIGINT are passed on to
    the running children once (they stop their training at a checkpoint) and no further
    family starts."""

    def __init__(self, jobs: int, child_flags: list[str]):
        self.jobs = jobs
        self.child_flags = child_flags
        self.signal: int | None = None
        self._running: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _handle(self, signum, frame):
        with self._lock:
            first = self.signal is None
            self.signal = self.signal or signum
            children = list(self._running.values())
        if first:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

    def _relay(self, family: str, stream) -> None:
        for line in stream:
            sys.stderr.write(f"[{family}] {line}")
            sys.stderr.flush()

    def run(self, families: list[str], out_dir: str) -> dict[str, dict]:
        """{family: its `run_family` result} for the families that ran (those not started
        after a signal are absent). Raises RuntimeError naming a family whose process failed
        (its output above says why)."""
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        results, failed, pending, relays = {}, [], list(families), []
        try:
            while pending or self._running:
                while pending and len(self._running) < self.jobs and self.signal is None:
                    family = pending.pop(0)
                    path = os.path.join(out_dir, f"{family}.json")
                    command = [
                        sys.executable,
                        os.path.abspath(__file__),
                        f"--families={family}",
                        f"--family_result={path}",
                        "--jobs=1",
                        *self.child_flags,
                    ]
                    # Its own session: a terminal's Ctrl-C reaches the child once, through us.
                    child = subprocess.Popen(command, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, bufsize=1,
                                             start_new_session=True)  # fmt: skip
                    relay = threading.Thread(target=self._relay, args=(family, child.stdout))
                    relay.start()
                    relays.append(relay)
                    with self._lock:
                        self._running[family] = child
                        if self.signal is not None:  # arrived while starting it
                            child.send_signal(self.signal)
                if self.signal is not None:
                    pending = []
                time.sleep(0.2)
                for family, child in list(self._running.items()):
                    if child.poll() is None:
                        continue
                    with self._lock:
                        del self._running[family]
                    path = os.path.join(out_dir, f"{family}.json")
                    if os.path.isfile(path):
                        with open(path) as f:
                            results[family] = json.load(f)
                    elif self.signal is None or child.returncode not in (
                        128 + self.signal,
                        -self.signal,
                    ):
                        failed.append(f"{family} (exit status {child.returncode})")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for relay in relays:
                relay.join()
        if failed:
            raise RuntimeError(f"main job: family processes failed: {', '.join(failed)}")
        return results


def headline_rows(results: dict) -> list[list]:
    """One row per (family, headline metric, baseline) for the final table, from each task's
    declared `headlines`; absent keys are skipped."""
    from sketch_tf.families import get_task_class

    rows = []
    for family, result in results.items():
        scalars = result.get("scalars", {})
        for headline in get_task_class(result.get("task", family)).headlines:
            if headline.key not in scalars:
                continue
            for name, base_key in headline.baselines or (("n/a", ""),):
                base = scalars.get(base_key)
                rows.append(
                    [
                        family,
                        headline.label,
                        float(scalars[headline.key]),
                        name,
                        float(base) if base is not None else "n/a",
                    ]
                )
    return rows


def _exit_if_interrupted(results: dict, workdir: str, stop_signal: int | None) -> None:
    """Says which families a signal stopped (step, checkpoint) and the command that resumes,
    and exits 128 + the signal; returns when none was stopped and no signal came."""
    stopped = [(f, r["interrupted"]) for f, r in results.items() if "interrupted" in r]
    if not stopped and stop_signal is None:
        return
    if not stopped:  # the signal came while no family was training: nothing half-trained
        cli.exit_after_signal(
            stop_signal,
            f"interrupted by {signal.Signals(stop_signal).name}: the main job stopped with "
            f"{sorted(results) or 'no family'} done; no results.json.",
        )
    for i, (family, info) in enumerate(stopped):
        what = f"the main job's training of family {family!r} ({os.path.join(workdir, family)})"
        result = SimpleNamespace(**info)
        if i + 1 < len(stopped):
            print(cli.interrupted_line(result, what), file=sys.stderr, flush=True)
        else:
            cli.exit_interrupted(result, what, note=_NOT_DONE)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv):
    cli.check_args(argv)
    from sketch_tf.families import family_names

    families = _FAMILIES.value or family_names()
    unknown = sorted(set(families) - set(family_names()))
    if unknown:
        cli.fail(f"--families: unknown {unknown}; choose from {family_names()}")
    if _JOBS.value < 0:
        cli.fail(f"--jobs must be >= 0, got {_JOBS.value}")
    workdir = _WORKDIR.value
    smoke = _SMOKE.value
    configs = {f: family_config(f, workdir, smoke) for f in families}

    if _FAMILY_RESULT.value:  # a family process of a parallel main job
        if len(families) != 1:
            cli.fail("--family_result needs exactly one family in --families")
        from sketch_tf.train import strategy as strategy_lib

        family = families[0]
        prepare_s = prepare_family(family, configs[family], _RENDER_WORKERS.value)
        result = run_family(
            family,
            configs[family],
            os.path.join(workdir, family),
            strategy_lib.build_strategy(_STRATEGY.value),
        )
        if "timings" in result:
            result["timings"] = {"prepare_s": prepare_s, **result["timings"]}
        result.pop("images", None)
        write_atomic(_FAMILY_RESULT.value, json.dumps(result, default=str))
        stop = result.get("interrupted", {}).get("stop_signal")
        sys.exit(128 + stop if stop else 0)

    os.makedirs(workdir, exist_ok=True)
    for family in families:  # before anything runs: records we must not render over
        check_records(family, configs[family])
    jobs = min(_JOBS.value or default_jobs(), len(families))
    from sketch_tf.data.synthetic.prepare import default_workers
    from sketch_tf.families import get_task_class

    # Costliest first: two processes then end close together (see Task.main_job_cpu_s).
    run_order = sorted(families, key=lambda f: -get_task_class(configs[f].task).main_job_cpu_s)
    child_flags = [f"--workdir={workdir}", f"--strategy={_STRATEGY.value}"]
    child_flags += ["--smoke"] if smoke else []
    # Each family renders on its share of the CPUs.
    child_flags += [f"--render_workers={max(1, default_workers() // jobs)}"]
    processes = _FamilyProcesses(jobs, child_flags)
    with tempfile.TemporaryDirectory(prefix="family-results-", dir=workdir) as out_dir:
        try:
            finished = processes.run(run_order, out_dir)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    stop_signal = processes.signal
    results = {f: finished[f] for f in families if f in finished}
    _exit_if_interrupted(results, workdir, stop_signal)

    print("\n" + "=" * 78)
    print("sketch_tf main job" + (" (smoke run: tiny data, numbers mean nothing)" if smoke else ""))
    from sketch_tf.eval.report import format_result, format_table

    for family, result in results.items():
        print()
        print(format_result(result, title=f"## {family} (step {result['step']})"))
        print(f"export: {result['export']}")
    print()
    print("## results on held-out data (ours vs non-learned baselines)")
    print(
        format_table(
            ["family", "metric", "ours", "baseline", "baseline value"], headline_rows(results)
        )
    )
    rows = []
    for family, result in results.items():
        t = result["timings"]
        rows.append(
            [
                family,
                result["step"],
                *(
                    round(t[k], 1)
                    for k in ("prepare_s", "train_s", "evaluate_s", "export_s", "cpu_s")
                ),
            ]
        )
    print()
    header = ["family", "steps", "prepare s", "train s", "evaluate s", "export s", "CPU s"]
    print(format_table(header, rows, ".1f"))
    wall = time.perf_counter() - _STARTED
    print(
        f"main job: {int(wall // 60)}:{wall % 60:04.1f} wall, {_cpu_seconds():.0f} CPU-s "
        f"(user + sys of this process and every process it waited for: renderers, families)"
    )
    summary_path = os.path.join(workdir, "results.json")
    summary = {k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in results.items()}
    write_atomic(summary_path, json.dumps(summary, indent=2, default=str))
    print(f"\nresults: {summary_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
