"""Imports flow one way through bitk's layers (docs/architecture.md): a layer imports only from lower levels."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "bitk"

# docs/architecture.md, "formats <- numerics <- nn / triton_kernels <- models <- gguf / data <-
# objectives / generate <- eval <- train <- bench": the level of each layer.
LEVELS = {
    "formats": 0,
    "numerics": 1,
    "nn": 2,
    "triton_kernels": 2,
    "models": 3,
    "gguf": 4,
    "data": 4,
    "objectives": 5,
    "generate": 5,
    "eval": 6,
    "train": 7,
}
# What every layer may use: the package's own helpers (below every layer) and its version.
SHARED = {"_checks", "_cli", "_lazy", "_codecs", "__version__"}
# Documented exceptions: nn loads the Triton kernels lazily, on first use (nn.dispatch).
ALLOWED = {("nn", "triton_kernels")}


def _layer_files() -> list[tuple[str, Path]]:
    files = [(path.relative_to(PACKAGE).parts[0], path) for path in PACKAGE.rglob("*.py")]
    files += [("triton_kernels", path) for path in (ROOT / "triton_kernels").rglob("*.py")]
    return [(layer, path) for layer, path in files if layer in LEVELS]


def _imported_layers(path: Path, layer: str) -> set[str]:
    """The bitk layers ``path`` imports (at any depth: module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                continue  # inside its own layer
            if node.level > 1:  # "from .. import x" / "from ..x import y": relative to python/bitk
                module = node.module or ""
                names = [f"bitk.{module}"] if module else [f"bitk.{a.name}" for a in node.names]
            elif node.module == "bitk":
                names = [f"bitk.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bitk" and len(parts) > 1 and parts[1] != layer:
                found.add(parts[1])
    return found


def test_every_layer_has_files():
    layers = {layer for layer, _ in _layer_files()}
    assert layers == set(LEVELS)


@pytest.mark.parametrize("layer", sorted(LEVELS))
def test_imports_flow_down(layer):
    wrong = []
    for owner, path in _layer_files():
        if owner != layer:
            continue
        for target in _imported_layers(path, layer):
            if target in SHARED or (layer, target) in ALLOWED:
                continue
            if target not in LEVELS or LEVELS[target] >= LEVELS[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports bitk.{target}")
    assert not wrong, "imports against the layer order (docs/architecture.md):\n" + "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bitk.train import config\n    from ..eval import cli\n")
    assert _imported_layers(bad, "models") == {"train", "eval"}
