"""Rich rendering of what the CLI reports: the pack summary, `inspect` and `verify` tables.

The summary groups the tensors of all blocks that share a role, type and shape into one row
(`blk.*.attn_q.weight x30`): a 30-block model otherwise prints 330 near-identical lines.
The console parses no rich markup: names, metadata values and paths come from files, and a
tensor named `[/]` must print as it is (not raise MarkupError); nothing here uses markup.
"""

from __future__ import annotations

import re
from typing import Any

from bitk.gguf.inspect import Description
from bitk.gguf.verifier import VerifyReport
from bitk.gguf.writer import PackResult

__all__ = ["console", "print_pack", "print_inspect", "print_verify", "human_bytes"]

_BLOCK = re.compile(r"^blk\.\d+\.")


def console(stderr: bool = False) -> Any:
    """A rich Console without markup; 160 columns when not writing to a terminal, so piped tables do not wrap."""
    from rich.console import Console

    c = Console(stderr=stderr, highlight=False, markup=False)
    if not c.is_terminal:
        c = Console(stderr=stderr, highlight=False, markup=False, width=160)
    return c


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def print_pack(res: PackResult, con: Any) -> None:
    from rich.table import Table

    groups: dict[tuple[str, str, tuple[int, ...]], list] = {}
    for r in res.rows:
        key = (_BLOCK.sub("blk.*.", r.name), r.type, r.shape)
        groups.setdefault(key, []).append(r)
    table = Table(title=f"{res.path.name}: {res.arch}, projections {res.qtype}")
    for col, justify in (
        ("tensor", "left"),
        ("count", "right"),
        ("type", "left"),
        ("shape [out, in]", "left"),
        ("bits/weight", "right"),
        ("bytes", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=justify)
    for (name, ttype, shape), rows in groups.items():
        table.add_row(
            name,
            str(len(rows)),
            ttype,
            _shape(shape),
            f"{rows[0].bits_per_weight:.3f}",
            human_bytes(sum(r.nbytes for r in rows)),
            rows[0].note or "",
        )
    con.print(table)
    con.print(
        f"wrote {res.path} ({human_bytes(res.file_bytes)}, {res.n_params / 1e6:.2f} M parameters)", soft_wrap=True
    )
    for note in res.notes:
        con.print(f"note: {note}", soft_wrap=True)
    for change in res.changes:
        con.print(f"changed: {change}", soft_wrap=True)


def print_inspect(d: Description, con: Any) -> None:
    from rich.table import Table

    con.print(
        f"{d.path}: GGUF v{d.version}, {human_bytes(d.file_size)}, {len(d.tensors)} tensors, "
        f"{d.n_params / 1e6:.2f} M parameters, data at byte {d.data_offset} (alignment {d.alignment})",
        soft_wrap=True,
    )
    meta = Table(title="metadata")
    for col in ("key", "type", "value"):
        meta.add_column(col)
    for key, vtype, value in d.metadata:
        meta.add_row(key, vtype, value)
    con.print(meta)
    tensors = Table(title="tensors")
    for col, justify in (
        ("tensor", "left"),
        ("type", "left"),
        ("shape [out, in]", "left"),
        ("bits/weight", "right"),
        ("bytes", "right"),
        ("offset", "right"),
        ("problem", "left"),
    ):
        tensors.add_column(col, justify=justify)
    for t in d.tensors:
        bpw = t.bits_per_weight
        tensors.add_row(
            t.name,
            t.type,
            _shape(t.shape),
            "?" if bpw is None else f"{bpw:.3f}",
            human_bytes(t.nbytes),
            str(t.offset),
            t.problem or "",
        )
    con.print(tensors)


def print_verify(rep: VerifyReport, con: Any, failures_only: bool = False) -> None:
    from rich.table import Table

    title = f"verify {rep.path.name}" + (f" against {rep.against}" if rep.against else "")
    table = Table(title=title)
    for col in ("check", "type", "shape [out, in]", "result", "detail"):
        table.add_column(col)
    for c in rep.checks:
        if failures_only and c.ok:
            continue
        table.add_row(c.what, c.type, _shape(c.shape) if c.shape else "", "ok" if c.ok else "FAIL", c.detail)
    con.print(table)
    n_fail = len(rep.failures)
    if n_fail:
        con.print(f"FAILED: {n_fail} of {len(rep.checks)} checks", soft_wrap=True)
    else:
        con.print(f"OK: {len(rep.checks)} checks passed", soft_wrap=True)
