"""Causal attention over packed documents, without a dense ``[L, L]`` mask where it matters.

A packed training sequence holds several documents back to back; a document starts wherever
position_ids == 0, and each token attends to the earlier tokens of its own document only
(block-diagonal causal). `attend` computes exactly that, and picks how:

- ``"causal"``: every row holds one document (or no position_ids): SDPA's is_causal path. Taken
  for position_ids without a boundary on the CPU, where reading them costs no device sync.
- ``"documents"``: one is_causal SDPA call per document (CPU, and CUDA without FlexAttention):
  exact, and memory grows with the longest document, not with L^2. It reads the document
  boundaries on the host.
- ``"flex"``: FlexAttention with a block mask built from the document ids (CUDA): the fused
  kernel skips the blocks the mask rules out; compiled once per process.
- ``"dense"``: SDPA with the boolean ``[B, 1, L, L]`` mask of `packed_causal_mask`. Used for
  short sequences (the mask is small, one call is fastest) and inside torch.compile on CPU, where
  the per-document loop would break the graph.

Every path gives the masked reference's outputs and gradients up to float rounding (tests/models).

`attend_cached` is the decoding case: L new queries after ``offset`` cached tokens, each attending
to every cached token and causally to the new ones.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["DENSE_MAX_ELEMENTS", "PackedDocuments", "attend", "attend_cached", "packed_causal_mask"]

DENSE_MAX_ELEMENTS = 1 << 22
"""Up to this many mask elements (B x L x L; 4 M = 4 MB of bool, e.g. 8 x 724^2) the dense path
runs: one SDPA call over the batch beats a call per document, and the mask costs little."""


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, L, L] (True = attend) for packed documents.

    A document starts wherever position_ids == 0; a token attends to earlier tokens of its own
    document only (block-diagonal causal). Computed on the device, no host sync.
    """
    doc = (position_ids == 0).cumsum(dim=-1)
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


class PackedDocuments:
    """The document layout of a packed batch, worked out once per forward and shared by all layers.

    ``position_ids`` [B, L] (or [1, L] for all rows). ``path`` forces one of the module doc's
    paths (None picks: see `choose_path`).
    """

    def __init__(self, position_ids: torch.Tensor, batch: int, path: str | None = None) -> None:
        self.position_ids = position_ids
        self.batch = batch
        self.path = path or choose_path(position_ids, batch)
        self._mask: torch.Tensor | None = None
        self._spans: list[list[tuple[int, int]]] | None = None
        self._block_mask = None

    def mask(self) -> torch.Tensor:
        """The dense boolean mask [B or 1, 1, L, L]."""
        if self._mask is None:
            self._mask = packed_causal_mask(self.position_ids)
        return self._mask

    def spans(self) -> list[list[tuple[int, int]]]:
        """Per row, the (start, end) token ranges of its documents (one host sync, once)."""
        if self._spans is None:
            L = self.position_ids.shape[-1]
            starts = (self.position_ids == 0).to("cpu")
            starts[:, 0] = True  # a row that begins mid-document still begins a span
            rows = []
            for row in starts:
                cut = row.nonzero().flatten().tolist() + [L]
                rows.append(list(zip(cut[:-1], cut[1:])))
            self._spans = rows * self.batch if len(rows) == 1 and self.batch > 1 else rows
        return self._spans

    def block_mask(self):
        """FlexAttention's BlockMask of the block-diagonal causal pattern."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            doc = (self.position_ids == 0).cumsum(dim=-1)
            doc = doc.expand(self.batch, -1) if doc.shape[0] == 1 else doc

            def document_causal(b, h, q_idx, kv_idx):
                return (doc[b, q_idx] == doc[b, kv_idx]) & (kv_idx <= q_idx)

            L = doc.shape[-1]
            self._block_mask = create_block_mask(
                document_causal, self.batch, None, L, L, device=self.position_ids.device
            )
        return self._block_mask


def choose_path(position_ids: torch.Tensor, batch: int) -> str:
    """The path `attend` takes for this layout (module doc).

    On the CPU (outside torch.compile) a layout whose rows each hold one document takes the
    ``"causal"`` path: reading position_ids costs no device sync there, and is_causal skips the
    masked half of the scores that the dense mask would compute and discard (the same outputs and
    gradients bit for bit on torch's CPU SDPA kernels).
    """
    on_cpu = position_ids.device.type == "cpu" and not torch.compiler.is_compiling()
    if on_cpu and not bool((position_ids[..., 1:] == 0).any()):
        return "causal"
    L = position_ids.shape[-1]
    if batch * L * L <= DENSE_MAX_ELEMENTS:
        return "dense"
    if position_ids.device.type == "cuda" and _flex() is not None:
        return "flex"
    if torch.compiler.is_compiling():
        return "dense"
    return "documents"


@functools.cache
def _flex():
    """flex_attention compiled (None where this torch has no FlexAttention)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    documents: PackedDocuments | None,
    *,
    scale: float,
    enable_gqa: bool,
) -> torch.Tensor:
    """Causal attention of q [B, H, L, D] over k, v [B, KV, L, D], kept inside each document.

    ``documents`` None: plain causal attention. ``enable_gqa``: k and v have fewer heads than q
    (grouped-query attention); SDPA's enable_gqa (torch >= 2.5) or FlexAttention's.
    """
    gqa = {"enable_gqa": True} if enable_gqa else {}
    path = "causal" if documents is None else documents.path
    if path == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    if path == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=documents.mask(), scale=scale, **gqa)
    if path == "flex":
        return _flex()(q, k, v, block_mask=documents.block_mask(), scale=scale, **gqa)
    if path != "documents":
        raise ValueError(f"unknown attention path {path!r}; expected causal, dense, flex or documents")
    spans = documents.spans()
    if all(len(row) == 1 for row in spans):  # no row holds a document boundary
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    rows = []
    for b, row in enumerate(spans):
        parts = [
            F.scaled_dot_product_attention(
                q[b : b + 1, :, s:e], k[b : b + 1, :, s:e], v[b : b + 1, :, s:e], is_causal=True, scale=scale, **gqa
            )
            for s, e in row
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0)


def attend_cached(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, *, scale: float, enable_gqa: bool
) -> torch.Tensor:
    """Attention of L new queries q [B, H, L, D] over k, v [B, KV, offset + L, D] (cached tokens first).

    New token i sits at position offset + i and attends to keys 0 .. offset + i. SDPA's is_causal
    aligns its triangle top-left (query i sees keys 0 .. i), right only when nothing is cached; one
    query sees every key (no mask); otherwise the mask is explicit.
    """
    gqa = {"enable_gqa": True} if enable_gqa else {}
    L = q.shape[2]
    if offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    if L == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **gqa)
    rows = torch.arange(L, device=q.device)[:, None] + offset
    mask = torch.arange(offset + L, device=q.device)[None, :] <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **gqa)
