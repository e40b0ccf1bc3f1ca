"""`python -m bitk.demo`: ternarize a random model's projections and pack them for CPU runtimes.

The README's main job until the trainer lands: it builds the seven projection matrices of each
block of a small BitNet-style decoder with random weights, ternarizes them with the training
quantizer (absmean), packs every one as I2_S (bitnet.cpp), TQ2_0 and TQ1_0 (llama.cpp), checks
that each file decodes back to the ternary weights, and prints the table of sizes.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bitk import formats
from bitk.formats.constants import row_multiple

QTYPES = ("I2_S", "TQ2_0", "TQ1_0")


def projection_shapes(hidden: int, ffn: int, heads: int, kv_heads: int) -> dict[str, tuple[int, int]]:
    """[out, in] of the seven BitLinear projections of one block (GGUF names)."""
    kv = hidden // heads * kv_heads
    return {
        "attn_q": (hidden, hidden),
        "attn_k": (kv, hidden),
        "attn_v": (kv, hidden),
        "attn_output": (hidden, hidden),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }


def pack_tensor(w: np.ndarray) -> dict[str, int]:
    """Ternarize `w`, pack it in every type that fits, verify the round trip; bytes per type."""
    codes, scale = formats.ternarize(w)
    ternary = codes.astype(np.float32) * np.float32(scale)
    sizes = {}
    for qtype in QTYPES:
        if w.shape[1] % row_multiple(qtype):
            continue
        data = formats.quantize(ternary, qtype)
        back = formats.dequantize(data, w.shape, qtype)
        # TQ types keep the scale as float16, so compare against that rounding.
        expected = ternary if qtype == "I2_S" else codes.astype(np.float32) * np.float32(np.float16(scale))
        if not np.array_equal(back, expected):
            raise AssertionError(f"{qtype} round trip changed the weights of a {w.shape} tensor")
        sizes[qtype] = data.size
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitk.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder blocks (default 2)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024)")
    parser.add_argument("--ffn", type=int, default=2816, help="FFN size (default 2816)")
    parser.add_argument("--heads", type=int, default=16, help="query heads (default 16)")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--backend", choices=formats.available_backends(), default=formats.backend(),
                        help=f"codec backend (default {formats.backend()})")
    args = parser.parse_args(argv)
    for name in ("layers", "hidden", "ffn", "heads", "kv_heads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")
    formats.set_backend(args.backend)

    rng = np.random.default_rng(args.seed)
    shapes = projection_shapes(args.hidden, args.ffn, args.heads, args.kv_heads)
    rows = []
    params = 0
    start = time.perf_counter()
    for layer in range(args.layers):
        for name, shape in shapes.items():
            w = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
            rows.append((f"blk.{layer}.{name}.weight", shape, pack_tensor(w)))
            params += w.size
    seconds = time.perf_counter() - start

    header = f"{'tensor':<26} {'shape [out, in]':>16} {'F32 bytes':>12}" + "".join(f" {q:>11}" for q in QTYPES)
    print(f"bitk demo: {args.layers} random blocks, hidden {args.hidden}, ffn {args.ffn}; backend {args.backend}")
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(QTYPES, 0)
    for name, shape, sizes in rows:
        cells = "".join(f" {sizes[q] if q in sizes else 'n/a':>11}" for q in QTYPES)
        print(f"{name:<26} {str(list(shape)):>16} {4 * shape[0] * shape[1]:>12}{cells}")
        for q in QTYPES:
            # A tensor a type cannot hold stays F16 in a real export.
            totals[q] += sizes.get(q, 2 * shape[0] * shape[1])
    print("-" * len(header))
    print(f"{'total':<26} {f'{params} weights':>16} {4 * params:>12}" + "".join(f" {totals[q]:>11}" for q in QTYPES))
    print(f"{'bits/weight':<26} {'':>16} {32.0:>12.4f}" + "".join(f" {8 * totals[q] / params:>11.4f}" for q in QTYPES))
    print(f"ternarized and packed {params / 1e6:.1f} M weights 3 ways in {seconds:.2f} s; every round trip exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
