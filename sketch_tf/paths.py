"""Locations the project reads from outside its own tree."""

import os
from pathlib import Path

#: Root of the project checkout (the folder holding setup.py).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Environment variable that overrides where the shared real data lives.
SHARED_DATA_ENV = "SKETCH_TF_SHARED_DATA"


def shared_data_dir() -> Path:
    """Folder of the real data used by tests and small evaluations.

    `$SKETCH_TF_SHARED_DATA` when set, else `<project root>/../shared/data`. The folder may
    be absent; callers check `.is_dir()` and skip with a reason.
    """
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return (PROJECT_ROOT.parent / "shared" / "data").resolve()
