"""Per-machine choice between the two implementations of an operation: XLA-compiled or plain
TensorFlow ops.

Why: an XLA kernel that beat the plain TF ops on an AVX-512 CPU was slower on an AVX2-only one
(issue 26: the training input's resample and colour jitter), so no choice made on one CPU is
right on every CPU. Each such operation is one `DualKernel`; its callers call `pick(size)`,
which returns the implementation to use, decided once per process:

1. `override(choice)` (a context manager: benches alternate the two paths in one process),
2. else the environment variable `SKETCH_TF_KERNELS` ("auto" | "xla" | "tf"; benches, tests),
3. else `configure(choice)` (the config's `train.kernels`, applied by the training loop and
   by `train.run.load_run`),
4. else "auto": the faster of the two on this machine, read from the cache file or measured
   now (`measure`: both implementations on a representative input of the op and size,
   warm-up excluded, alternated, a few repeats, median, well under a second each) and
   written to the cache.

The cache is a small JSON file, `$SKETCH_TF_KERNEL_CACHE` or
`${XDG_CACHE_HOME:-~/.cache}/sketch_tf/kernels.json`, keyed by the machine (CPU model, core
count and any ISA cap set through `ONEDNN_MAX_CPU_ISA` / `XLA_FLAGS=--xla_cpu_max_isa`), the
TensorFlow version and the op (`name@size`). It is written atomically; a corrupt file is
reported and rebuilt, a folder that cannot be written only costs the measurement next time.
Every decision is logged once per process (absl, INFO): the op, both timings, the choice and
where it came from.

The choice is made when a caller is traced (a `tf.data` map, a `tf.function`), so a dataset
or function built under one choice keeps it, and an exported SavedModel (the zooms describe
signatures) keeps the choice of the machine that exported it. Both implementations give the
same values to float tolerance (tests/test_kernels.py). Timings are taken on the CPU, where
`tf.data` runs these ops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import tensorflow as tf
from absl import logging

from sketch_tf.core.files import write_atomic
from sketch_tf.core.machine import cpu_model

#: The two implementations of a `DualKernel`.
IMPLEMENTATIONS = ("xla", "tf")
#: Values of `SKETCH_TF_KERNELS`, `configure` and `override` (the config's `train.kernels`).
CHOICES = ("auto",) + IMPLEMENTATIONS
ENV_CHOICE = "SKETCH_TF_KERNELS"
ENV_CACHE = "SKETCH_TF_KERNEL_CACHE"
CACHE_FORMAT = "sketch_tf kernel timings"
CACHE_VERSION = 1
#: `measure`: time budget per implementation after the warm-up, and the repeats' bounds: a
#: 1 ms op gets ~200 samples (a few of another process's bursts do not move the median; with 9
#: samples one did, and the cached choice was wrong), a 90 ms one 5.
MEASURE_BUDGET_S = 0.2
MIN_REPEATS, MAX_REPEATS = 5, 200


@dataclasses.dataclass(frozen=True)
class DualKernel:
    """One operation with an XLA-compiled and a plain-TF implementation of one signature.

    Attributes:
      name: the op's name in logs and in the cache (unique per process).
      xla: the XLA-compiled implementation (a `tf.function(jit_compile=True)` or a function
        calling one).
      tf: the plain-TF-ops implementation, same arguments, same values to float tolerance.
      example: size -> the arguments of a representative call at that size (eager tensors /
        Python values), what `measure` times both implementations on.
      default_size: the size of `pick()` without one.
    """

    name: str
    xla: Callable
    tf: Callable
    example: Callable[[int], tuple]
    default_size: int

    @tf.autograph.experimental.do_not_convert
    def pick(self, size: int | None = None) -> Callable:
        """The implementation to call for inputs of `size` (op-specific: an output side, a
        view side, a shrink factor; None = `default_size`), chosen as the module docstring
        says."""
        return getattr(self, choose(self, size))


@dataclasses.dataclass
class _State:
    configured: str = "auto"
    overridden: str | None = None
    #: (op key, wanted) -> choice, for decisions already made (and logged) in this process.
    decided: dict = dataclasses.field(default_factory=dict)
    #: "name@size" -> (kernel, size) of every pick in this process (`used`).
    used: dict = dataclasses.field(default_factory=dict)


_STATE = _State()
_LOCK = threading.RLock()


def _check_choice(value: str, where: str) -> str:
    if value not in CHOICES:
        raise ValueError(f"{where} must be one of {CHOICES}, got {value!r}")
    return value


def configure(choice: str) -> None:
    """Sets the process-wide choice of the config (`train.kernels`): "auto", "xla" or "tf".
    `SKETCH_TF_KERNELS` and `override` take precedence over it."""
    with _LOCK:
        _STATE.configured = _check_choice(choice, "train.kernels")


@contextlib.contextmanager
def override(choice: str) -> Iterator[None]:
    """Within the block, every kernel picked (i.e. every caller traced) uses `choice`
    ("auto" = measured / cached); above the environment variable and the config."""
    with _LOCK:
        previous, _STATE.overridden = _STATE.overridden, _check_choice(choice, "override")
    try:
        yield
    finally:
        with _LOCK:
            _STATE.overridden = previous


def reset() -> None:
    """Forgets this process's decisions and config choice (tests)."""
    with _LOCK:
        _STATE.configured, _STATE.overridden = "auto", None
        _STATE.decided.clear()
        _STATE.used.clear()


def used() -> dict[str, tuple[DualKernel, int]]:
    """{"name@size": (kernel, size)} of every kernel picked in this process so far (what a
    bench reports the per-machine choice of: `choose(kernel, size)` under `override("auto")`)."""
    with _LOCK:
        return dict(_STATE.used)


def requested() -> tuple[str, str]:
    """(choice, where it comes from): the override, the environment or the config."""
    if _STATE.overridden is not None:
        return _STATE.overridden, "override"
    env = os.environ.get(ENV_CHOICE, "").strip()
    if env:
        return _check_choice(env, f"${ENV_CHOICE}"), f"${ENV_CHOICE}"
    return _STATE.configured, "train.kernels"


def cache_path() -> str:
    """The cache file: `$SKETCH_TF_KERNEL_CACHE`, else `<user cache>/sketch_tf/kernels.json`."""
    path = os.environ.get(ENV_CACHE)
    if path:
        return path
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sketch_tf", "kernels.json")


def machine_key() -> str:
    """What a timing depends on besides the op: CPU model, core count, ISA caps, TF version,
    e.g. "AMD EPYC | 2 cpu | tf 2.21.0" (+ " | ONEDNN_MAX_CPU_ISA=AVX2 | xla isa AVX2")."""
    parts = [cpu_model(), f"{os.cpu_count()} cpu", f"tf {tf.__version__}"]
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        parts.append(f"ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}")
    xla_isa = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if xla_isa:
        parts.append(f"xla isa {xla_isa.group(1)}")
    return " | ".join(parts)


def _op_key(kernel: DualKernel, size: int) -> str:
    return f"{machine_key()} | {kernel.name}@{size}"


def read_cache(path: str) -> dict[str, dict]:
    """The entries of the cache file {key: {"xla_ms", "tf_ms", "choice"}}; {} when absent.

    A file that is not such a JSON document (truncated, edited, another format) is reported
    (absl warning naming it and what is wrong) and read as empty, so it is rebuilt; entries
    that are malformed are dropped the same way."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        logging.warning("kernel cache %s cannot be read (%s): measuring again", path, e)
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        logging.warning("kernel cache %s is not JSON (%s): it is rebuilt", path, e)
        return {}
    if (
        not isinstance(doc, dict)
        or doc.get("format") != CACHE_FORMAT
        or doc.get("version") != CACHE_VERSION
        or not isinstance(doc.get("entries"), dict)
    ):
        logging.warning(
            "kernel cache %s is not a version-%d %r file: it is rebuilt",
            path,
            CACHE_VERSION,
            CACHE_FORMAT,
        )
        return {}
    entries = {}
    for key, entry in doc["entries"].items():
        if _valid_entry(entry):
            entries[key] = entry
        else:
            logging.warning(
                "kernel cache %s: entry %r is malformed (%r): dropped", path, key, entry
            )
    return entries


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("choice") in IMPLEMENTATIONS
        and all(isinstance(entry.get(f"{i}_ms"), (int, float)) for i in IMPLEMENTATIONS)
    )


def _write_cache(path: str, key: str, entry: dict) -> None:
    """Adds `entry` under `key` to the cache file (read again first: another process may have
    added entries since), atomically; a failed write is logged, not raised."""
    entries = read_cache(path)
    entries[key] = entry
    doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries}
    try:
        write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        logging.warning("kernel cache %s cannot be written (%s): measured again next time", path, e)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if needed) for the block; without one when the
    file cannot be opened (an unwritable cache folder: nothing is shared then anyway)."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 (held for the block)
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure(kernel: DualKernel, size: int) -> dict[str, float]:
    """Median milliseconds per call of each implementation on `kernel.example(size)`.

    Both run as graphs (`tf.function`, as inside a `tf.data` map or a training step) after
    one warm-up call each (tracing, XLA compilation), then alternate (so a load change of the
    machine hits both alike) for at least `MIN_REPEATS` and at most `MAX_REPEATS` rounds,
    stopping once the slower has used `MEASURE_BUDGET_S`. Runs eagerly even when called while a
    caller is being traced (`tf.init_scope`), on the CPU.

    Returns:
      {"xla": ms, "tf": ms}.
    """
    # On the CPU, where `tf.data` runs them, also on a machine with a GPU.
    with tf.init_scope(), tf.device("/cpu:0"):
        args = kernel.example(size)
        fns = {i: tf.function(getattr(kernel, i)) for i in IMPLEMENTATIONS}
        for fn in fns.values():
            _block(fn(*args))
        times: dict[str, list[float]] = {i: [] for i in IMPLEMENTATIONS}
        for r in range(MAX_REPEATS):
            order = IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]
            for impl in order:
                t0 = time.perf_counter()
                _block(fns[impl](*args))
                times[impl].append(time.perf_counter() - t0)
            if r + 1 >= MIN_REPEATS and any(sum(t) >= MEASURE_BUDGET_S for t in times.values()):
                break
    return {i: 1e3 * statistics.median(t) for i, t in times.items()}


def _block(result) -> None:
    """Waits for `result` (a tensor or nest of tensors) to be computed."""
    for t in tf.nest.flatten(result):
        t.numpy()


@tf.autograph.experimental.do_not_convert
def choose(kernel: DualKernel, size: int | None = None) -> str:
    """The choice, "xla" or "tf", for `kernel` at `size` (None = its `default_size`); see the module
    docstring for the order. Logs each decision once per process."""
    size = kernel.default_size if size is None else int(size)
    with _LOCK:
        _STATE.used[f"{kernel.name}@{size}"] = (kernel, size)
        wanted, source = requested()
        key = _op_key(kernel, size)
        if (key, wanted) in _STATE.decided:
            return _STATE.decided[key, wanted]
        path = cache_path()
        entry = read_cache(path).get(key)
        how = "cached in " + path
        if wanted == "auto" and entry is None:
            # One process measures, the others wait for its entry: all processes of a
            # machine (workers of one job, a test and its subprocesses) use the same kernels.
            with _file_lock(path + ".lock"):
                entry = read_cache(path).get(key)
                if entry is None:
                    ms = measure(kernel, size)
                    entry = {
                        "xla_ms": round(ms["xla"], 4),
                        "tf_ms": round(ms["tf"], 4),
                        "choice": min(IMPLEMENTATIONS, key=lambda i: ms[i]),
                    }
                    _write_cache(path, key, entry)
                    how = "measured now, written to " + path
        choice = entry["choice"] if wanted == "auto" else wanted
        timing = (
            f"xla {entry['xla_ms']:.3g} ms, tf {entry['tf_ms']:.3g} ms" if entry else "not measured"
        )
        reason = how if wanted == "auto" else f"forced by {source}={wanted}"
        logging.info("kernel %s@%d: %s -> %s (%s)", kernel.name, size, timing, choice, reason)
        _STATE.decided[key, wanted] = choice
        return choice
