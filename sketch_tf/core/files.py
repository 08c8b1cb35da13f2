"""Atomic file writes: a reader (TF Serving, a resumed run, a second evaluation) sees the old
file or the new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside `path` for writing; on leaving the block without an
    error it replaces `path` (`os.replace`, atomic on one filesystem), on an error it is
    removed and the error re-raised, so `path` keeps its previous content.

    The temporary is hidden and unique per process and call (`.<stem>-<pid>-<hex><ext>` in the
    folder of `path`, created with the usual permissions), so concurrent writers never share
    one and globs like `metrics_*.json` never match it. The folder of `path` is created when
    missing.

    Args:
      path: the file to (re)write.
      mode: `"w"` (text, UTF-8) or `"wb"` (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    # "x": never truncate a file that happens to exist under the temporary's name.
    exclusive = mode.replace("w", "x")
    try:
        with open(tmp, exclusive, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomic(path: str, data: str | bytes) -> str:
    """Writes `data` (text as UTF-8, or bytes) to `path` atomically (`atomic_file`); returns
    `path`. Raises the OSError of the failed write; `path` is then unchanged."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path
