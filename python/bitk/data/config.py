"""DataConfig: what a training run reads (the trainer's "data" group; torch-free).

`bitk.data.stream.TrainData` turns it into packed, seeded, rank-sharded training blocks and a
held-out split; docs/data.md describes sources, packing and the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitk._checks import check_bool, check_int, check_number

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """What the model reads: sources, mixture, packing, held-out split (the "data" group)."""

    sources: list[str] = field(default_factory=lambda: ["default"])
    """Text sources: "default" (bitk's embedded corpus), local .txt/.jsonl/.json/.parquet files or
    folders, or Hugging Face hub data set names (when online)."""
    weights: list[float] | None = None
    """Mixture weights, one per source (normalised); null = equal weights."""
    text_field: str = "text"
    """Column holding the text in jsonl/json/parquet sources."""
    block_size: int = 256
    """Tokens per packed training sequence (documents framed by EOS, or BOS and EOS, as the
    tokenizer says; per-document positions)."""
    streaming: bool = False
    """Read sources lazily with `datasets` streaming instead of loading them whole."""
    heldout_fraction: float = 0.05
    """Share of each source's documents kept for evaluation ("default" uses its own held-out split;
    0 holds nothing out)."""
    max_eval_tokens: int = 16384
    """At most this many held-out tokens are evaluated each time."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("data.sources must be a non-empty list of sources, e.g. data.sources=[default]")
        for s in self.sources:
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"data.sources must hold non-empty strings, got {s!r}")
        if self.weights is not None:
            if len(self.weights) != len(self.sources):
                raise ValueError(
                    f"data.weights has {len(self.weights)} entries, data.sources has "
                    f"{len(self.sources)}: give one weight per source (or weights=null)"
                )
            for w in self.weights:
                check_number("data.weights", w, low=0.0, low_open=True)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"data.text_field must be a non-empty string, got {self.text_field!r}")
        check_int("data.block_size", self.block_size, low=2)
        check_bool("data.streaming", self.streaming)
        check_number("data.heldout_fraction", self.heldout_fraction, low=0.0, high=0.5)
        check_int(
            "data.max_eval_tokens",
            self.max_eval_tokens,
            low=self.block_size,
            why=f" (at least one block of data.block_size={self.block_size})",
        )
