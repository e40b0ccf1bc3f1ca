"""Every number of the ternary formats, in one place (docs/formats.md).

Type ids are ggml's: TQ1_0 and TQ2_0 from upstream llama.cpp, I2_S from bitnet.cpp's fork.
Nothing else in bitk hard-codes a block size, a byte count or a type id.
"""

from __future__ import annotations

# ggml type ids.
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_TQ1_0 = 34
GGML_TYPE_TQ2_0 = 35
GGML_TYPE_I2_S = 36  # bitnet.cpp's fork only; gguf-py does not know it

# `general.file_type` for a "mostly I2_S" file in bitnet.cpp's fork (informational).
FILE_TYPE_MOSTLY_I2_S = 40

# A ternary weight w in {-1, 0, +1} is stored as the 2-bit code c = w + 1; code 3 is invalid.
CODE_OFFSET = 1
INVALID_CODE = 3

# I2_S: n/4 bytes of 2-bit codes, then a 32-byte tail whose first 4 bytes are the float32 scale.
I2S_TAIL_BYTES = 32
I2S_ROW_MULTIPLE = 128  # ne0 % 128 == 0 for every layout: the runtime reads whole 128-value blocks
I2S_LAYOUTS = ("x86", "arm", "x86-1x4")
I2S_DEFAULT_LAYOUT = "x86"
# Values per block for the blocked layouts; x86-1x4 interleaves groups of rows instead.
I2S_BLOCK = {"x86": 128, "arm": 64}
I2S_ROWS_INTERLEAVED = 4  # x86-1x4 packs four rows into one byte row

# TQ1_0 / TQ2_0: blocks of 256 values (QK_K) with one float16 scale each.
QK_K = 256
TQ2_0_BLOCK_BYTES = 66  # qs[64], d (f16)
TQ1_0_BLOCK_BYTES = 54  # qs[48], qh[4], d (f16)
TQ1_0_QS_BYTES = 48
TQ1_0_QH_BYTES = 4

QTYPES = ("I2_S", "TQ2_0", "TQ1_0")

GGML_TYPE_IDS = {
    "F32": GGML_TYPE_F32,
    "F16": GGML_TYPE_F16,
    "TQ1_0": GGML_TYPE_TQ1_0,
    "TQ2_0": GGML_TYPE_TQ2_0,
    "I2_S": GGML_TYPE_I2_S,
}

# Absmean ternarization (docs/formats.md "Ternarization"): gamma = max(mean|W|, 1e-5).
ABSMEAN_EPS = 1e-5
# The sum of |W| runs in float64 in one fixed order (chunks of ABS_SUM_CHUNK values viewed as
# rows of ABS_SUM_LANES, pairwise trees) so numpy, C++ and torch get the same gamma bit for bit;
# see reference.abs_sum.
ABS_SUM_CHUNK = 1 << 16
ABS_SUM_LANES = 16


def row_multiple(qtype: str) -> int:
    """How many values a row (ne0) must be a multiple of for `qtype`."""
    return I2S_ROW_MULTIPLE if qtype == "I2_S" else QK_K


def nbytes(qtype: str, rows: int, cols: int) -> int:
    """Bytes of a [rows, cols] tensor stored as `qtype` (cols = ne0, the fastest dimension)."""
    n = rows * cols
    if qtype == "I2_S":
        return n // 4 + I2S_TAIL_BYTES
    if qtype == "TQ2_0":
        return n // QK_K * TQ2_0_BLOCK_BYTES
    if qtype == "TQ1_0":
        return n // QK_K * TQ1_0_BLOCK_BYTES
    raise ValueError(f"unknown ternary qtype {qtype!r}; expected one of {', '.join(QTYPES)}")


def bits_per_weight(qtype: str, rows: int, cols: int) -> float:
    """Storage cost per weight, tails and scales included."""
    return 8.0 * nbytes(qtype, rows, cols) / (rows * cols)
