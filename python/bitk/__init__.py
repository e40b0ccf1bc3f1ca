"""bitk: a kernel-first toolkit for 1.58-bit (ternary, BitNet b1.58) language models.

Submodules load on first use, so `import bitk` stays fast and needs neither torch nor the
compiled extension:

- `bitk.formats`: absmean ternarization and the I2_S / TQ2_0 / TQ1_0 codecs (numpy + C++).
- `bitk.numerics`: the pure-torch reference numerics every kernel is tested against.
- `bitk.nn`: the layers (BitLinear, SubLN, BitLinearLRC), dispatched to kernels per device.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("formats", "numerics", "nn")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"bitk.{name}")
    raise AttributeError(f"module 'bitk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
