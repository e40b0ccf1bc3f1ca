"""CausalLM: bitk's one compact decoder, the BitNet b1.58 block and its full-precision parents.

docs/numerics.md "SubLN and the BitNet block": pre-RMSNorm, grouped-query attention (SDPA) with
NEOX-style RoPE (rotate_half, as Hugging Face Llama) and optional per-head q/k RMSNorm (Qwen3),
optional SubLN before o_proj and down_proj, gated FFN (relu^2 or SiLU), tied or untied head.
Projections are `bitk.nn.BitLinear` when `config.ternary`, else `nn.Linear`; embeddings, head and
norms stay full precision. Modules and parameters carry the Hugging Face names, so a transformers
Llama / Qwen3 / BitNet state dict loads with `load_state_dict`. Diagram: docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bitk.nn import BitLinear, BitLinearLRC, RMSNorm, SubLN, functional, resolve, set_numerics

from .attention import PackedDocuments, attend, attend_cached, packed_causal_mask
from .cache import KVCache
from .checkpoint import (
    SAVE_DTYPES,
    WEIGHTS_FILE,
    assign_tensors,
    check_tensors,
    expected_shapes,
    read_checkpoint_meta,
    save_checkpoint,
)
from .config import ModelConfig

__all__ = ["CausalLM", "CausalLMOutput", "KVCache", "load_checkpoint", "packed_causal_mask", "rotary_cos_sin"]

# SDPA's enable_gqa (torch >= 2.5) lets grouped K/V heads attend without materialising copies.
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass
class CausalLMOutput:
    """What `CausalLM.forward` returns; the optional fields are None unless asked for."""

    logits: torch.Tensor | None
    """[B, L, vocab_size] next-token logits (None when the forward ran with logits=False)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """num_hidden_layers + 1 tensors [B, L, hidden]: the embedding output, then each layer's output;
    as in transformers, the last one is taken after the final norm."""
    attention_states: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] | None = None
    """Per layer (q, k, v), [B, L, heads * head_dim] each (k and v have the KV heads), after the
    projections (and q/k norm), before RoPE: the inputs of MiniLM-style relation distillation."""
    last_hidden: torch.Tensor | None = None
    """With logits=False: [B, L, hidden], the final norm's output, which the head maps to logits."""
    head: nn.Module | None = None
    """With logits=False: the head (``lm_head``), hidden -> logits."""


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, 1, L, head_dim] of NEOX RoPE for position_ids [B, L], in float32 (or float64).

    Same formula and float32 evaluation as transformers' default rotary embedding:
    ``inv_freq = 1 / theta^(2i/d)``, angles ``pos * inv_freq`` duplicated over both halves.
    A float64 model gets float64 angles (it serves as the reference of derived tolerances).
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).to(dtype) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids[..., None].to(dtype) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotated in cos's dtype (float32, or float64 for a float64 model) and returned in x's dtype,
    # so bf16 activations under autocast keep their dtype for SDPA and the angles their accuracy.
    xf = x.to(cos.dtype)
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def _linear(config: ModelConfig, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    if config.ternary and config.lrc_rank_ratio:
        return BitLinearLRC(in_features, out_features, bias=bias, rank=config.lrc_rank(in_features, out_features))
    cls = BitLinear if config.ternary else nn.Linear
    return cls(in_features, out_features, bias=bias)


def _project(proj: nn.Linear, x: torch.Tensor, norm: RMSNorm | None) -> torch.Tensor:
    """``proj(norm(x))``, fused into one kernel when proj is a BitLinear (the Triton path)."""
    if norm is None:
        return proj(x)
    if isinstance(proj, BitLinear):
        return proj(x, norm=norm)
    return proj(norm(x))


class Attention(nn.Module):
    """Grouped-query self-attention: q/k/v/o projections, optional q/k norm and attention SubLN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = _linear(c, c.hidden_size, c.q_size, c.attention_bias)
        self.k_proj = _linear(c, c.hidden_size, c.kv_size, c.attention_bias)
        self.v_proj = _linear(c, c.hidden_size, c.kv_size, c.attention_bias)
        self.o_proj = _linear(c, c.q_size, c.hidden_size, c.attention_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, eps=c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, eps=c.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.attn_sub_norm = SubLN(c.q_size, eps=c.rms_norm_eps) if c.subln else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        documents: PackedDocuments | None,
        states: list | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """``cache``: keys and values of earlier tokens; this call's are appended as ``layer``'s."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if states is not None:
            states.append((q.flatten(2), k.flatten(2), v.flatten(2)))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.update(layer, k, v)
        if self.num_kv_heads != self.num_heads and not _SDPA_GQA:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        gqa = self.num_kv_heads != self.num_heads and _SDPA_GQA
        if cache is None:
            out = attend(q, k, v, documents, scale=self.head_dim**-0.5, enable_gqa=gqa)
        else:
            out = attend_cached(q, k, v, offset, scale=self.head_dim**-0.5, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)
        return _project(self.o_proj, out, self.attn_sub_norm)


def _gated(gate: torch.Tensor, up: torch.Tensor, relu2: bool) -> torch.Tensor:
    """``act(gate) * up`` with act relu^2 or SiLU."""
    return functional.relu2_gate(gate, up) if relu2 else F.silu(gate) * up


def _gated_norm(gate: torch.Tensor, up: torch.Tensor, relu2: bool, norm: RMSNorm) -> torch.Tensor:
    """``norm(act(gate) * up)``: the SubLN'd input of down_proj."""
    return norm(_gated(gate, up, relu2))


class MLP(nn.Module):
    """Gated FFN ``down(subln(act(gate(x)) * up(x)))`` with act relu^2 (BitNet) or SiLU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.gate_proj = _linear(c, c.hidden_size, c.intermediate_size, False)
        self.up_proj = _linear(c, c.hidden_size, c.intermediate_size, False)
        self.down_proj = _linear(c, c.intermediate_size, c.hidden_size, False)
        self.ffn_sub_norm = SubLN(c.intermediate_size, eps=c.rms_norm_eps) if c.subln else None
        self.hidden_act = c.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        relu2, norm, down = self.hidden_act == "relu2", self.ffn_sub_norm, self.down_proj
        if not (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
            return _project(down, _gated(gate, up, relu2), norm)
        # Training keeps gate and up for the backward and recomputes act(gate) * up (and the SubLN)
        # from them, instead of keeping act's and the norm's intermediates too: the same ops, so
        # the same gradients bit for bit. The fused SubLN + BitLinear kernel keeps only int8
        # activations of the norm, so there the SubLN stays in the layer.
        fused = type(down) is BitLinear and down.numerics == "train" and resolve(gate.device) == "triton"
        if norm is None or fused:
            return _project(down, checkpoint(_gated, gate, up, relu2, use_reentrant=False), norm)
        return down(checkpoint(_gated_norm, gate, up, relu2, norm, use_reentrant=False))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, documents, states=None, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, documents, states, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """The body (``model.`` in Hugging Face names): embedding, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class CausalLM(nn.Module):
    """bitk's decoder-only language model (see the module doc and docs/models.md).

    ``model(input_ids)`` gives logits; ``position_ids`` (restarting at 0 at each document) runs
    packed sequences with attention kept inside each document. ``config`` is the ModelConfig it
    was built from; ``tokenizer_dir`` is the tokenizer folder it was loaded with, if any.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"CausalLM takes a ModelConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.tokenizer_dir: Path | None = None
        self.activation_checkpointing = False
        """Recompute each block in the backward instead of keeping its activations (training only)."""
        self.attention_path: str | None = None
        """Force one path of `bitk.models.attention.attend` for packed documents (None: it picks)."""
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig) -> CausalLM:
        """A freshly initialised model (normal(0, initializer_range) weights, unit norm gains)."""
        return cls(config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise from scratch: normal(0, initializer_range) linears and embedding, zero biases, unit norms."""
        if self.lm_head.weight.is_meta:
            return  # built on the meta device to be loaded: nothing to initialise (and no RNG import)
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        output_attention_states: bool = False,
        logits: bool = True,
    ) -> CausalLMOutput:
        """Logits [B, L, vocab] of input_ids [B, L] (see CausalLMOutput for the optional outputs).

        position_ids None: positions 0..L-1 and plain causal attention (SDPA's is_causal path).
        position_ids [B, L] or [L]: RoPE at those positions, and attention kept inside each
        document (a document starts where position_ids == 0; `bitk.models.attention`).
        ``cache`` (`bitk.models.KVCache`): the tokens continue those cached, at positions
        cache.length .. cache.length + L - 1; they attend to every cached token and causally to
        each other, and are appended to the cache. ValueError with position_ids, for a cache of
        another batch size, or past ``config.max_position_embeddings``.
        ``logits`` False: no logits; the output holds the head's input (``last_hidden``) and the
        head, so that a loss can compute the logits a chunk of tokens at a time
        (`bitk.objectives.chunked`) instead of all [B, L, vocab] at once.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if cache is not None:
            if position_ids is not None:
                raise ValueError("a KVCache continues one sequence: it cannot be combined with position_ids")
            cache.check_append(B, L)
            end = cache.length + L
            if end > self.config.max_position_embeddings:
                raise ValueError(
                    f"{cache.length} cached + {L} new tokens exceed the model's max_position_embeddings "
                    f"({self.config.max_position_embeddings})"
                )
            pos = torch.arange(cache.length, end, device=input_ids.device)[None]
            documents = None
        elif position_ids is None:
            pos = torch.arange(L, device=input_ids.device)[None]
            documents = None
        else:
            pos = position_ids if position_ids.dim() == 2 else position_ids[None]
            if pos.dim() != 2 or pos.shape[-1] != L or pos.shape[0] not in (1, B):
                raise ValueError(
                    f"position_ids must be [{B}, {L}] or [{L}] to match input_ids {tuple(input_ids.shape)}, "
                    f"got shape {tuple(position_ids.shape)}"
                )
            pos = pos.to(input_ids.device)
            documents = PackedDocuments(pos, B, self.attention_path)
        h = self.model.embed_tokens(input_ids)
        rope_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        cos, sin = rotary_cos_sin(pos, self.config.head_dim, self.config.rope_theta, rope_dtype)
        hidden = [h] if output_hidden_states else None
        states: list | None = [] if output_attention_states else None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, layer in enumerate(self.model.layers):
            if recompute:
                h = checkpoint(layer, h, cos, sin, documents, states, use_reentrant=False)
            elif cache is None:
                h = layer(h, cos, sin, documents, states)
            else:
                h = layer(h, cos, sin, documents, states, cache, i)
            if hidden is not None:
                hidden.append(h)
        if cache is not None:
            cache.advance(L)
        h = self.model.norm(h)
        if hidden is not None:
            hidden[-1] = h  # as transformers: the last hidden state is the normed one
        return CausalLMOutput(
            logits=self.lm_head(h) if logits else None,
            hidden_states=None if hidden is None else tuple(hidden),
            attention_states=None if states is None else tuple(states),
            last_hidden=None if logits else h,
            head=None if logits else self.lm_head,
        )

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied head counted once); optionally without embedding and head."""
        skip = set()
        if exclude_embeddings:
            skip = {id(self.model.embed_tokens.weight), id(self.lm_head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int) -> CausalLM:
        """Grow the embedding (and an untied head) to ``vocab_size`` rows; new rows start as the mean row.

        ``config.vocab_size`` follows. For a token the tokenizer gains (the DLM mask token, say):
        the mean embedding is a neutral start. Shrinking is refused (it would drop tokens).
        """
        old = self.config.vocab_size
        if not isinstance(vocab_size, int) or vocab_size < old:
            raise ValueError(f"resize_token_embeddings grows the vocabulary ({old} rows); got {vocab_size!r}")
        if vocab_size == old:
            return self

        def grown(weight: torch.Tensor) -> nn.Parameter:
            rows = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(vocab_size - old, -1)
            return nn.Parameter(torch.cat([weight, rows]), requires_grad=weight.requires_grad)

        self.model.embed_tokens.weight = grown(self.model.embed_tokens.weight)
        self.model.embed_tokens.num_embeddings = vocab_size
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.lm_head.weight = grown(self.lm_head.weight)
        self.lm_head.out_features = vocab_size
        self.config = self.config.replace(vocab_size=vocab_size)
        return self

    def set_numerics(self, mode: str) -> CausalLM:
        """What every BitLinear computes: 'train', 'i2s' or 'float' (`bitk.nn.set_numerics`)."""
        set_numerics(self, mode)
        return self

    def save(self, path: str | Path, tokenizer: Any = None, extra: dict | None = None) -> Path:
        """Write a bitk checkpoint (bitk.models.checkpoint): tokenizer = a folder, a
        `tokenizers.Tokenizer` or None (then the folder the model was loaded with, if any)."""
        return save_checkpoint(self, path, tokenizer=tokenizer, extra=extra)

    def extra_repr(self) -> str:
        c = self.config
        kind = "ternary" if c.ternary else "full precision"
        return (
            f"{kind}, subln={c.subln}, qk_norm={c.qk_norm}, {c.num_hidden_layers} layers, "
            f"{self.num_parameters():,} parameters"
        )


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> CausalLM:
    """Load a bitk checkpoint written by `save_checkpoint`, parameters in the stored dtype.

    Every tensor is checked against the config: missing, unexpected or mis-shaped tensors raise
    ValueError naming them. ``model.tokenizer_dir`` is the checkpoint folder when it holds a
    tokenizer.json.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    meta = read_checkpoint_meta(path)
    config = ModelConfig.from_dict(meta["model"])
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    with torch.device("meta"):
        model = CausalLM(config)
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        check_tensors(expected_shapes(model), found, f"checkpoint {path}")
        tensors = {name: f.get_tensor(name) for name in found}
    bad = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in SAVE_DTYPES})
    if bad:
        raise ValueError(f"checkpoint {path}: tensors must be float32 or bfloat16, found {', '.join(bad)}")
    assign_tensors(model, tensors)
    model.tokenizer_dir = path if (path / "tokenizer.json").is_file() else None
    return model
