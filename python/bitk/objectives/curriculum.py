"""Objective curricula: which objectives weigh how much in which part of a run (torch-free).

A `Curriculum` is a list of phases ``(start_fraction, {objective: weight})``: phase i is active
from step ``ceil(start_fraction * max_steps)`` on. Its compact string form, which the trainer's
config carries in one field (``training.objectives``), is ``"0:ce=1;0.2:ce=1,dlm=1"`` (phases
separated by ``;``, each ``start:name=weight,...``; a single phase may omit ``0:``). Objectives:
``ce``, ``dlm``, ``logits_kd``, ``attention_relation``, ``layerwise``, ``lrc``; the last four
need a teacher. `bitk.objectives.combiner.compute_loss` computes them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["OBJECTIVES", "TEACHER_OBJECTIVES", "Curriculum", "needs_teacher"]

OBJECTIVES = ("ce", "dlm", "logits_kd", "attention_relation", "layerwise", "lrc")
"""Names of the objectives, as curricula and `compute_loss` weights spell them."""
TEACHER_OBJECTIVES = ("logits_kd", "attention_relation", "layerwise", "lrc")
"""The objectives that compare the student with a teacher."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    return value


def _format(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True, eq=True)
class Curriculum:
    """Ordered phases ``(start_fraction, {objective: weight})`` of a run (module doc).

    Validation (ValueError): at least one phase; the first starts at 0; start fractions strictly
    increase and lie in [0, 1); names are in `OBJECTIVES`; weights are finite and >= 0 and each
    phase has at least one positive weight.
    """

    phases: tuple[tuple[float, dict[str, float]], ...]

    def __post_init__(self) -> None:
        phases = []
        if isinstance(self.phases, (str, bytes)) or not hasattr(self.phases, "__iter__"):
            raise ValueError(f"a curriculum is a list of (start_fraction, weights) phases, got {self.phases!r}")
        for i, phase in enumerate(self.phases):
            if not isinstance(phase, (tuple, list)) or len(phase) != 2 or not isinstance(phase[1], Mapping):
                raise ValueError(
                    f"curriculum phase {i + 1} must be (start_fraction, {{objective: weight}}), got {phase!r}"
                )
            start, weights = phase
            if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 <= start < 1.0:
                raise ValueError(f"curriculum phase {i + 1}: start fraction must be in [0, 1), got {start!r}")
            checked = _check_weights(weights, f"curriculum phase {i + 1}")
            if not any(w > 0 for w in checked.values()):
                raise ValueError(f"curriculum phase {i + 1} has no positive weight: {dict(weights)!r}")
            phases.append((float(start), checked))
        if not phases:
            raise ValueError("a curriculum needs at least one phase")
        if phases[0][0] != 0.0:
            raise ValueError(f"the first curriculum phase must start at 0, got {phases[0][0]}")
        for (a, _), (b, _) in itertools.pairwise(phases):
            if not b > a:
                raise ValueError(f"curriculum start fractions must strictly increase, got {a} then {b}")
        object.__setattr__(self, "phases", tuple(phases))

    @classmethod
    def parse(cls, text: str) -> Curriculum:
        """From the compact form ``"0:ce=1;0.2:ce=1,dlm=1"``; a single phase may omit ``0:`` (``"ce=1"``)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a curriculum string looks like '0:ce=1;0.2:ce=1,dlm=1', got {text!r}")
        phases = []
        for piece in text.split(";"):
            piece = piece.strip()
            if not piece:
                raise ValueError(f"curriculum {text!r}: empty phase (a stray ';'?)")
            start_text, sep, body = piece.partition(":")
            if not sep:
                if len(text.split(";")) > 1:
                    raise ValueError(
                        f"curriculum {text!r}: phase {piece!r} needs a start fraction, as in '0.2:{piece}'"
                    )
                start_text, body = "0", piece
            start = _number(start_text.strip(), f"curriculum {text!r}, phase {piece!r}, start fraction")
            weights: dict[str, float] = {}
            for item in body.split(","):
                name, eq, value = (s.strip() for s in item.partition("="))
                if not eq or not name:
                    raise ValueError(f"curriculum {text!r}: {item.strip()!r} is not name=weight")
                if name in weights:
                    raise ValueError(f"curriculum {text!r}: {name!r} appears twice in phase {piece!r}")
                weights[name] = _number(value, f"curriculum {text!r}, weight of {name!r}")
            phases.append((start, weights))
        return cls(tuple(phases))

    @classmethod
    def constant(cls, weights: Mapping[str, float]) -> Curriculum:
        """One phase for the whole run."""
        return cls(((0.0, dict(weights)),))

    def phase_index_at(self, step: int, max_steps: int) -> int:
        """Index of the phase active at ``step`` (0-based) of a ``max_steps`` run."""
        starts = self.phase_starts(max_steps)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        return max(i for i, s in enumerate(starts) if step >= s)

    def phase_starts(self, max_steps: int) -> list[int]:
        """First step of each phase: ``ceil(start_fraction * max_steps)``, computed on the decimal
        value of the fraction (0.07 * 100 is 7, not float 7.000000000000001 -> 8)."""
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        return [math.ceil(Fraction(repr(start)) * max_steps) for start, _ in self.phases]

    def weights_at(self, step: int, max_steps: int) -> dict[str, float]:
        """The weights of the phase active at ``step`` (a copy; objectives it does not name weigh 0)."""
        return dict(self.phases[self.phase_index_at(step, max_steps)][1])

    def all_weights(self) -> dict[str, float]:
        """Every objective some phase weighs above 0, at its largest weight: the costliest step of the
        run (what a memory probe such as the trainer's auto batch size must try)."""
        weights: dict[str, float] = {}
        for _, phase in self.phases:
            for name, w in phase.items():
                if w > 0:
                    weights[name] = max(w, weights.get(name, 0.0))
        return weights

    def objectives(self) -> set[str]:
        """Every objective some phase weighs above 0."""
        return {name for _, weights in self.phases for name, w in weights.items() if w > 0}

    def describe(self, max_steps: int | None = None) -> str:
        """One line for logs, e.g. ``phase 1 from 0% (step 0): ce=1 | phase 2 from 20% (step 2): ce=1, dlm=1``."""
        starts = self.phase_starts(max_steps) if max_steps is not None else None
        parts = []
        for i, (start, weights) in enumerate(self.phases):
            at = f" (step {starts[i]})" if starts is not None else ""
            body = ", ".join(f"{n}={_format(w)}" for n, w in weights.items())
            parts.append(f"phase {i + 1} from {100 * start:g}%{at}: {body}")
        return " | ".join(parts)

    def __str__(self) -> str:
        """The compact form, which `parse` reads back to an equal curriculum."""
        return ";".join(
            f"{_format(start)}:" + ",".join(f"{n}={_format(w)}" for n, w in weights.items())
            for start, weights in self.phases
        )


def _check_weights(weights: Mapping[str, float], what: str) -> dict[str, float]:
    checked = {}
    for name, w in weights.items():
        if name not in OBJECTIVES:
            raise ValueError(f"{what}: unknown objective {name!r}; objectives: {', '.join(OBJECTIVES)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{what}: the weight of {name!r} must be a finite number >= 0, got {w!r}")
        checked[name] = float(w)
    return checked


def needs_teacher(curriculum: Curriculum | str) -> bool:
    """True when some phase gives a teacher objective (`TEACHER_OBJECTIVES`) a positive weight."""
    if isinstance(curriculum, str):
        curriculum = Curriculum.parse(curriculum)
    return bool(curriculum.objectives() & set(TEACHER_OBJECTIVES))
