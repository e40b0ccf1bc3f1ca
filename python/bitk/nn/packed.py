"""BitLinear layers that hold only their 2-bit packed weights and gamma (what `bitk.gguf.load` builds).

A ternary projection read from a GGUF file is codes and one scale. In "i2s" numerics on the CPU
with bitk's C++ kernels (`bitk.nn.cpu.matmul_engine() == "cpp"`), BitLinear's forward reads only
those codes, 2 bits each, and gamma, so a `PackedBitLinear` keeps only those: about n k / 4 bytes
instead of the 4 n k of float32 latent weights, in one of two layouts (``layout``):

- "i2s": the bytes of the I2_S tensor as the file holds them (the "x86" layout of blocks of 128,
  docs/formats.md, with the 32-byte tail of its scale), multiplied as they are by
  ``bitk._codecs.i2s_gemm_divide``: what `bitk.gguf.load` keeps of an I2_S projection;
- "panels": the codes packed for bitk's training-time kernel (`ternary_gemm_pack`), for I2_S files
  of the other layouts.

Its ``weight`` Parameter keeps its shape, dtype, device and ``requires_grad`` but no values (one
NaN, broadcast).

Anything else that needs the weight turns the layer back into a plain BitLinear first
(`PackedBitLinear.unpack`): a forward in another numerics mode or matmul engine, reading
``.weight`` (training, `quantized_weight`), ``state_dict``, ``load_state_dict``, and ``to()`` /
``half()`` / ``cuda()`` ... when they change the dtype or device (``to("cpu")`` does not). Its
weight then becomes `bitk.formats.latent_weights` of the unpacked codes and gamma: the float32
weights the layer would have held had it never been packed, so every number is the same. Like
`torch.nn.utils.parametrize`, this swaps the module's class in place, so references to the layer
and to its weight Parameter (an optimizer's) stay valid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bitk import formats
from bitk.formats.constants import ABSMEAN_EPS, I2S_ROW_MULTIPLE

from . import cpu, inference
from . import functional as F
from .bitlinear import BitLinear
from .norm import RMSNorm

__all__ = [
    "LAYOUTS",
    "PackedBitLinear",
    "hold_packed",
    "i2s_weights",
    "pack_ternary",
    "unpack_ternary_gemm",
    "weight_placeholder",
]

LAYOUTS = ("i2s", "panels")

# The layout of `ternary_gemm_pack` (csrc/ternary_gemm.h): 16-row panels of 16-column groups, 64 bytes each.
_PANEL, _GROUP = 16, 16


def pack_ternary(codes: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """(``codes`` packed 2 bits each for bitk's kernels, gamma) of a ternary tensor of one ``scale``.

    gamma is what a BitLinear ternarizing ``latent_weights(codes, scale)`` computes: float32(scale),
    or the absmean floor (1e-5) for all-zero codes (whose latent weights are zeros). ValueError,
    as `bitk.formats.latent_weights`, for a scale that is not finite or under the floor.
    """
    gamma = _gamma(scale, bool(codes.any()))
    return cpu._codecs().ternary_gemm_pack(np.ascontiguousarray(codes, dtype=np.int8)), gamma


def _gamma(scale: float, any_code: bool) -> float:
    """float32(scale), or the absmean floor where every code is 0; ValueError for a scale that is
    not finite or under the floor."""
    s = np.float32(scale)
    if not np.isfinite(s) or s < np.float32(ABSMEAN_EPS):
        raise ValueError(f"scale must be finite and >= {ABSMEAN_EPS} (the absmean floor); got {scale!r}")
    return float(s) if any_code else float(np.float32(ABSMEAN_EPS))


def i2s_weights(data: object, n: int, k: int) -> tuple[np.ndarray, float]:
    """(a copy of ``data``, gamma): the bytes of an I2_S tensor [n, k] in the "x86" layout, with
    the 32-byte tail of its scale, as an "i2s" `PackedBitLinear` holds them.

    gamma is what `pack_ternary` gives for the same codes and scale. ValueError for a k that is no
    multiple of 128, a wrong byte count, a 2-bit value 3 (no code) or a scale `pack_ternary` refuses.
    """
    body = n * (k // 4)
    if k % I2S_ROW_MULTIPLE:
        raise ValueError(f"an I2_S tensor's rows are whole blocks of {I2S_ROW_MULTIPLE} values; k={k} is not")
    data = np.array(data, dtype=np.uint8, copy=True).reshape(-1)
    if data.size != body + 32:
        raise ValueError(f"{data.size} bytes are not an I2_S tensor [{n}, {k}] ({body + 32} bytes with its scale)")
    codes = data[:body]
    if np.any(codes & (codes >> 1) & 0x55):
        raise ValueError("the I2_S bytes hold the 2-bit value 3, which is no ternary code")
    scale = float(data[body : body + 4].view("<f4")[0])
    return data, _gamma(scale, bool(np.any(codes != 0x55)))  # 0x55: four zero codes


def unpack_ternary_gemm(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """int8 codes [n, k] in {-1, 0, 1} back from ``ternary_gemm_pack(codes)`` (numpy, exact).

    In group g of panel p (64 bytes at ``(p * groups + g) * 64``), byte ``4 r + q`` holds
    ``code + 1`` of row ``16 p + r``, column ``16 g + 4 t + q`` in its bits ``2t .. 2t + 1``.
    """
    panels, groups = -(-n // _PANEL), -(-k // _GROUP)
    data = np.asarray(packed, dtype=np.uint8)
    if data.size != panels * groups * _PANEL * _GROUP // 4:
        raise ValueError(f"unpack_ternary_gemm: {data.size} bytes are not the packed codes of [{n}, {k}]")
    data = data.reshape(panels, groups, _PANEL, 1, 4)  # [p, g, r, t, q]
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)
    c = (data >> shifts) & 3  # [p, g, r, t, q]: the 2-bit value of column 16 g + 4 t + q
    c = c.transpose(0, 2, 1, 3, 4).reshape(panels * _PANEL, groups * _GROUP)[:n, :k]
    return c.astype(np.int8) - 1


def weight_placeholder(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A tensor of ``shape`` backed by one NaN (4 bytes): the place of a weight whose values are packed."""
    return torch.full((1,), float("nan"), dtype=dtype, device=device).expand(shape)


class PackedBitLinear(BitLinear):
    """A BitLinear holding only its codes, 2 bits each (``packed``, in ``layout``), and ``gamma`` (module doc).

    Made from a BitLinear by `hold_packed`; `unpack` (or anything that needs the float weights)
    turns it back into one. Its "i2s" forward on the CPU with bitk's kernels computes what the
    BitLinear does, bit for bit, from the packed weights alone.
    """

    packed: np.ndarray
    gamma: torch.Tensor
    layout: str

    @property
    def weight(self) -> torch.nn.Parameter:  # type: ignore[override]
        """The latent float32 weights: reading them unpacks the layer into a BitLinear."""
        self.unpack()
        return self._parameters["weight"]

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        if self.numerics == "i2s" and x.device.type == "cpu" and cpu.matmul_engine() == "cpp":
            if norm is not None:
                x = F.rms_norm(x, norm.weight, norm.eps)
            return inference.bitlinear_i2s_packed(x, self.packed, self.gamma, self.bias, self.out_features, self.layout)
        self.unpack()
        return self.forward(x, norm)

    def unpack(self) -> None:
        """Become the BitLinear this layer was made from: float32 latent weights of its codes and gamma."""
        weight = self._parameters["weight"]
        if self.layout == "i2s":
            codes = formats.unpack_i2s(self.packed, (self.out_features, self.in_features), "x86")[0]
        else:
            codes = unpack_ternary_gemm(self.packed, self.out_features, self.in_features)
        try:
            latent = formats.latent_weights(codes, self.gamma.item())
        except ValueError as exc:
            raise ValueError(
                f"this packed BitLinear [{self.out_features}, {self.in_features}] runs only in 'i2s' numerics "
                f"on the CPU with bitk's kernels: its float weights cannot be rebuilt ({exc})"
            ) from None
        with torch.no_grad():
            weight.data = torch.from_numpy(latent)
        del self.packed, self.gamma, self.layout
        self.__class__ = BitLinear

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedBitLinear:
        weight = self._parameters["weight"]
        probe = torch.empty(0, dtype=weight.dtype, device=weight.device)
        if fn(probe) is probe:  # no conversion (to("cpu"), float(), share_memory()): stay packed
            return super()._apply(fn, recurse)
        self.unpack()
        return self._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self.unpack()
        self._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.unpack()
        self._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights=2-bit packed ({self.layout})"


def hold_packed(layer: BitLinear, packed: np.ndarray, gamma: float, layout: str = "panels") -> PackedBitLinear:
    """Make ``layer`` (a float32 CPU BitLinear) a `PackedBitLinear` of ``packed`` and ``gamma`` in place:
    its weight Parameter keeps its shape, dtype and device and gives up its values.

    ``layout`` "panels": ``packed`` and gamma from `pack_ternary`; "i2s": from `i2s_weights`.
    """
    if type(layer) is not BitLinear:
        raise ValueError(f"hold_packed takes a BitLinear, got {type(layer).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    weight = layer.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"hold_packed takes a float32 CPU layer, got {weight.dtype} on {weight.device}")
    n, k = layer.out_features, layer.in_features
    if layout == "i2s":
        if k % I2S_ROW_MULTIPLE:
            raise ValueError(f"hold_packed: an I2_S tensor's rows are whole blocks of {I2S_ROW_MULTIPLE}; k={k} is not")
        expected, what = n * (k // 4) + 32, "an I2_S tensor"
    else:
        expected, what = cpu._codecs().ternary_gemm_packed_size(n, k), "the packed codes"
    if np.asarray(packed).nbytes != expected:
        raise ValueError(
            f"hold_packed: {np.asarray(packed).nbytes} bytes are not {what} of [{n}, {k}] ({expected} bytes)"
        )
    with torch.no_grad():
        weight.data = weight_placeholder(weight.shape, weight.dtype, weight.device)
    layer.__dict__.pop("_bitk_frozen", None)  # caches of the values it held
    layer.__class__ = PackedBitLinear
    layer.packed = packed
    layer.gamma = torch.tensor(gamma, dtype=torch.float32)
    layer.layout = layout
    return layer
