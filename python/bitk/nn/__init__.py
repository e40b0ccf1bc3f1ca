"""bitk's layers: BitLinear (ternary weights, int8 activations), SubLN / RMSNorm, BitLinearLRC.

Each layer dispatches per device (`bitk.nn.dispatch`): the fused Triton kernels on CUDA, an exact
and faster CPU path on CPU, the pure-torch reference (`bitk.numerics`) when forced or elsewhere.
All paths compute the reference's numbers (bit for bit or within derived tolerances).
"""

from . import functional
from .bitlinear import BitLinear, set_numerics, set_quant_lambda
from .dispatch import BACKENDS, backend, resolve, set_backend, use_backend
from .inference import NUMERICS
from .lrc import BitLinearLRC
from .norm import RMSNorm, SubLN

__all__ = [
    "BitLinear",
    "BitLinearLRC",
    "RMSNorm",
    "SubLN",
    "set_quant_lambda",
    "set_numerics",
    "NUMERICS",
    "functional",
    "BACKENDS",
    "backend",
    "set_backend",
    "use_backend",
    "resolve",
]
