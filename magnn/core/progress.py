"""Whether progress bars show: the caller's wish, unless TQDM_DISABLE is set (tqdm's own variable,
which an explicit `disable=` argument would otherwise override; `magnn --no-progress` sets it)."""
from __future__ import annotations

import os

OFF_VALUES = ("1", "true", "yes", "on")


def progress_enabled(wanted: bool = True) -> bool:
    """`wanted`, and TQDM_DISABLE not set to 1/true/yes/on."""
    return bool(wanted) and os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_VALUES
