"""Int8 simulation that matches the deployed kernels: QAT, PTQ and their range observers.

Imported lazily (PEP 562): ``edgekd.quant.scheme``, which target profiles read, must not pull in
torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "list_observers": "edgekd.quant.observers",
    "PTQConfig": "edgekd.quant.ptq", "post_training_quantize": "edgekd.quant.ptq",
    "quantize_checkpoint": "edgekd.quant.ptq",
    "QATConfig": "edgekd.quant.qat", "calibrate": "edgekd.quant.qat", "freeze": "edgekd.quant.qat",
    "prepare_qat": "edgekd.quant.qat",
    "qat_finetune": "edgekd.quant.finetune",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekd.quant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = list(_LAZY)
