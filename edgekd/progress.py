"""Progress bars for long work (training, calibration, benchmarking), on stderr.

Shown when stderr is a terminal; ``EDGEKD_PROGRESS=1`` forces them on (e.g. in CI logs) and
``EDGEKD_PROGRESS=0`` turns them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", leave: bool = True, initial: int = 0) -> tqdm:
    setting = os.environ.get("EDGEKD_PROGRESS", "")
    disable = {"0": True, "1": False}.get(setting, not sys.stderr.isatty())
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=disable, initial=initial,
                dynamic_ncols=True, file=sys.stderr)
