"""Package-level behaviour: fast, torch-free import; the layout installs under the right names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_bitk_and_formats_needs_no_torch():
    out = run_python(
        "import sys, bitk, bitk.formats as f, numpy as np\n"
        "c, s = f.ternarize(np.ones((4, 256), np.float32))\n"
        "f.quantize(c * np.float32(s), 'TQ2_0')\n"
        "print('torch' in sys.modules)"
    )
    assert out.strip() == "False"


def test_submodules_load_lazily():
    import bitk

    assert bitk.formats.backend() in ("cpp", "numpy")
    assert callable(bitk.numerics.quantize_weights)
    assert "formats" in dir(bitk)
    try:
        bitk.nope  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_triton_kernels_folder_installs_as_bitk_triton_kernels(tmp_path):
    import bitk.triton_kernels

    assert bitk.triton_kernels.__file__.endswith("triton_kernels/__init__.py")
    # The top-level name belongs to the package published from the Triton repository: the install
    # must not make bitk's folder importable as `triton_kernels`. Asked from another folder, as the
    # checkout itself (the current folder of a test run) would put the folder on sys.path; compared
    # by file, not by whether a path contains "bitk" (a checkout may be anywhere, named anything).
    origin = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; s = importlib.util.find_spec('triton_kernels'); print(s.origin if s else '')",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    ours = Path(bitk.triton_kernels.__file__).resolve()
    assert not origin or Path(origin).resolve() != ours, origin
