"""DataConfig: what a training run reads (the trainer's "data" group; torch-free).

`bitk.data.stream.TrainData` turns it into packed, seeded, rank-sharded training blocks and a
held-out split; docs/data.md describes sources, mixtures, packing and the split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitk._checks import check_bool, check_choice, check_int, check_number

__all__ = ["MIXTURES", "DataConfig", "SourceSpec", "source_name"]

MIXTURES = ("fixed", "influence")
"""data.mixture: "fixed" keeps the weights; "influence" re-weights the sources by their gradient's
alignment with the probe's (docs/data.md "Mixtures")."""

SOURCE_KEYS = ("path", "name", "weight", "text_field", "split", "subset")
"""The keys of a source given as a mapping: data.sources=[{path: web.jsonl, name: web, weight: 2}]."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class SourceSpec:
    """One entry of data.sources, resolved: where the text is, what the run calls it, its start weight."""

    path: str
    """"default", a local file or folder, or a hub data set id."""
    name: str
    """The source's name in metrics (tokens/NAME, mixture/NAME), logs and the data state."""
    weight: float
    """Its mixture weight before normalisation."""
    text_field: str
    """The column holding the text (jsonl / json / parquet / hub rows)."""
    split: str | None = None
    """A hub data set's split (None: its only split)."""
    subset: str | None = None
    """A hub data set's configuration (`datasets.load_dataset(path, name=subset)`)."""


def source_name(path: str) -> str:
    """The name a source gets without `name=`: "default", a file's stem, a folder's or hub id's last part."""
    if path == "default":
        return "default"
    p = Path(path.rstrip("/\\"))
    stem = p.stem if p.suffix else p.name
    return stem or path


@dataclass
class DataConfig:
    """What the model reads: sources, mixture, packing, held-out split (the "data" group)."""

    sources: list[Any] = field(default_factory=lambda: ["default"])
    """Text sources: "default" (bitk's embedded corpus), local .txt/.jsonl/.json/.parquet files or
    folders, or Hugging Face hub data set ids; each a string or a mapping {path, name, weight,
    text_field, split, subset}. A source is named by `name`, else its file stem (folder or hub id:
    the last part)."""
    weights: list[float] | None = None
    """Mixture weights, one per source (normalised); null = the sources' own `weight`, else equal."""
    text_field: str = "text"
    """Column holding the text in jsonl/json/parquet/hub sources (a source's `text_field` wins)."""
    block_size: int = 256
    """Tokens per packed training sequence (documents framed by EOS, or BOS and EOS, as the
    tokenizer says; per-document positions)."""
    streaming: bool = False
    """Read sources lazily with `datasets` streaming instead of loading them whole (hub ids stream
    without a download)."""
    heldout_fraction: float = 0.05
    """Share of each source's documents kept for evaluation ("default" uses its own held-out split;
    0 holds nothing out)."""
    max_eval_tokens: int = 16384
    """At most this many held-out tokens are evaluated each time."""
    mixture: str = "fixed"
    """"fixed": the weights stay; "influence": every mixture_every steps each source's weight moves
    by the alignment of its gradient with the probe's gradient (docs/data.md "Mixtures")."""
    probe: Any = None
    """The target text the influence mixture serves: "default" (the embedded corpus's held-out
    split), a local file or folder, or a hub data set id; or a mapping {path, text_field, split,
    subset}. Its loss is logged at each evaluation."""
    probe_tokens: int = 2048
    """Tokens of the fixed probe batch (its first documents, packed); each re-weighting runs a
    forward and backward over them."""
    mixture_every: int = 20
    """Steps between re-weightings (data.mixture=influence)."""
    mixture_temperature: float = 1.0
    """Multiplicative-weights temperature: w <- w * exp(alignment / temperature), the alignment in
    [-1, 1]; lower moves faster."""
    mixture_floor: float = 0.1
    """Every source keeps at least this share of an equal split (floor / number of sources); 0 lets a
    source starve."""
    mixture_layers: int = 2
    """Gradients are compared on the last this-many decoder layers and the final norm."""

    def _spec(self, entry: Any, where: str, keys: tuple[str, ...] = SOURCE_KEYS) -> SourceSpec:
        """One source entry (a string or a mapping of ``keys``) as a SourceSpec; ValueError naming ``where``."""
        if isinstance(entry, str):
            if not entry.strip():
                raise ValueError(f"{where} is an empty string; name a file, folder, hub id or default")
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ValueError(
                f"{where} must be a source (a path, hub id or default) or a mapping "
                f"{{{', '.join(f'{k}: ...' for k in keys[:3])}}}, got {entry!r}"
            )
        unknown = [k for k in entry if k not in keys]
        if unknown:
            raise ValueError(f"{where} has the unknown key {unknown[0]!r}; keys: {', '.join(keys)}")
        path = entry.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{where} needs a path: a file, folder, hub id or default, got {path!r}")
        name = entry.get("name")
        if name is None:
            name = source_name(path)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{where}.name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
                f"digit), got {name!r}"
            )
        weight = entry.get("weight", 1.0)
        check_number(f"{where}.weight", weight, low=0.0, low_open=True)
        text_field = entry.get("text_field", self.text_field)
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"{where}.text_field must be a non-empty string, got {text_field!r}")
        for key in ("split", "subset"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{where}.{key} must be a non-empty string, got {value!r}")
        return SourceSpec(path, name, float(weight), text_field, entry.get("split"), entry.get("subset"))

    def probe_spec(self) -> SourceSpec | None:
        """data.probe as a SourceSpec (None without one); ValueError naming the bad entry."""
        if self.probe is None:
            return None
        return self._spec(self.probe, "data.probe", ("path", "text_field", "split", "subset"))

    def specs(self) -> list[SourceSpec]:
        """The sources as `SourceSpec`s, weights applied (ValueError naming the bad entry)."""
        specs = [self._spec(entry, f"data.sources[{i}]") for i, entry in enumerate(self.sources)]
        seen: dict[str, str] = {}
        for s in specs:
            if s.name in seen:
                raise ValueError(
                    f"two data sources are named {s.name!r} ({seen[s.name]} and {s.path}): name them, e.g. "
                    f"data.sources=[{{path: {s.path}, name: {s.name}2}}]"
                )
            seen[s.name] = s.path
        if self.weights is not None:
            if len(self.weights) != len(specs):
                raise ValueError(
                    f"data.weights has {len(self.weights)} entries for {len(specs)} sources: give one weight per "
                    "source (or weights=null)"
                )
            for w in self.weights:
                check_number("data.weights", w, low=0.0, low_open=True)
            given = [i for i, e in enumerate(self.sources) if isinstance(e, dict) and "weight" in e]
            if given:
                raise ValueError(
                    f"data.sources[{given[0]}] has a weight and data.weights is set too: give the weights one way"
                )
            specs = [
                SourceSpec(s.path, s.name, float(w), s.text_field, s.split, s.subset)
                for s, w in zip(specs, self.weights, strict=True)
            ]
        return specs

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("data.sources must be a non-empty list of sources, e.g. data.sources=[default]")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"data.text_field must be a non-empty string, got {self.text_field!r}")
        self.specs()
        check_int("data.block_size", self.block_size, low=2)
        check_bool("data.streaming", self.streaming)
        check_number("data.heldout_fraction", self.heldout_fraction, low=0.0, high=0.5)
        check_int(
            "data.max_eval_tokens",
            self.max_eval_tokens,
            low=self.block_size,
            why=f" (at least one block of data.block_size={self.block_size})",
        )
        check_choice("data.mixture", self.mixture, MIXTURES)
        self.probe_spec()
        if self.mixture == "influence" and self.probe is None:
            raise ValueError(
                "data.mixture=influence needs data.probe: the text the mixture should serve (a file, a "
                "folder, a hub id, or default for bitk's held-out text)"
            )
        check_int("data.probe_tokens", self.probe_tokens, low=2)
        check_int("data.mixture_every", self.mixture_every, low=1)
        check_number("data.mixture_temperature", self.mixture_temperature, low=0.0, low_open=True)
        check_number("data.mixture_floor", self.mixture_floor, low=0.0, high=1.0, high_open=True)
        check_int("data.mixture_layers", self.mixture_layers, low=1)
