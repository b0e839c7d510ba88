"""Where converted models and compiled kernels live: the user cache.

The root is ``$AUTOJUDGE_CACHE`` if set, else ``$XDG_CACHE_HOME/autojudge``, else
``~/.cache/autojudge``. Entries are written with :func:`autojudge.storage.atomic_directory`:
if one exists, it is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUTOJUDGE_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "autojudge"
