"""The C++ codecs under faults: misaligned buffers, shapes that overflow, refused threads, bad env.

Misaligned float loads are undefined behaviour (UBSan flagged them; -O3 may emit aligned vector
loads), so the bindings copy misaligned input to aligned memory: the results must equal those of
the aligned array. A failed std::thread creation used to SIGABRT the process; it now runs the rest
on the calling thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_codecs = pytest.importorskip("bitk._codecs")


def misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` at an odd byte offset (as numpy views of a file or buffer can be)."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    raw[1:] = a.reshape(-1).view(np.uint8)
    out = np.frombuffer(raw, a.dtype, offset=1).reshape(a.shape)
    assert not out.flags.aligned
    return out


def test_misaligned_inputs_give_the_aligned_results():
    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    codes, gamma = _codecs.ternarize(w)
    got_codes, got_gamma = _codecs.ternarize(misaligned(w))
    assert got_gamma == gamma and np.array_equal(got_codes, codes)
    assert _codecs.abs_sum(misaligned(w)) == _codecs.abs_sum(w)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    assert _codecs.ternarize_bf16(misaligned(bits))[1] == _codecs.ternarize_bf16(bits)[1]
    tern = (codes * np.float32(gamma)).astype(np.float32)
    for quantize in (
        lambda x: _codecs.quantize_i2s(x, "x86"),
        _codecs.quantize_tq2_0,
        _codecs.quantize_tq1_0,
    ):
        assert np.array_equal(quantize(misaligned(tern)), quantize(tern))


def test_gemm_refuses_misaligned_arrays():
    codes = np.zeros((4, 32), np.int8)
    packed = _codecs.ternary_gemm_pack(codes)
    s = misaligned(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="aligned"):
        _codecs.ternary_gemm(np.zeros((2, 32), np.int8), s, packed, 4, 1.0)


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(2**33, 2**39), (2**62, 4), (-4, 256), (256, -256), (2**63 - 1, 2**63 - 1)],
)
@pytest.mark.parametrize("name", ["dequantize_tq2_0", "dequantize_tq1_0", "dequantize_i2s", "unpack_i2s"])
def test_shapes_whose_counts_overflow_are_value_errors(name, rows, cols):
    args = (np.zeros(32, np.uint8), rows, cols) + (("x86",) if "i2s" in name else ())
    with pytest.raises(ValueError, match="negative dimension|more elements than a 64-bit count holds"):
        getattr(_codecs, name)(*args)


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space via /proc/self/status")
def test_refused_threads_fall_back_to_fewer():
    # The address space is capped just above what the process uses: the threads' stacks cannot be
    # mapped, so std::thread throws std::system_error (before the fix: std::terminate, SIGABRT).
    proc = run(
        """
        import resource
        import numpy as np
        from bitk import _codecs
        w = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
        want = _codecs.abs_sum(w), _codecs.ternarize(w)
        vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + (24 << 20), resource.RLIM_INFINITY))
        got = _codecs.abs_sum(w), _codecs.ternarize(w)
        assert got[0] == want[0] and got[1][1] == want[1][1] and (got[1][0] == want[1][0]).all()
        print("same")
        """,
        BITK_NUM_THREADS="64",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-3", "4x", "", "99999999999999999999", "100000"])
def test_bad_or_huge_thread_counts_are_ignored_or_capped(value):
    proc = run(
        """
        import numpy as np
        from bitk import _codecs
        w = np.random.default_rng(0).standard_normal((512, 4096)).astype(np.float32)
        print(_codecs.abs_sum(w), _codecs.ternarize(w)[1])
        """,
        BITK_NUM_THREADS=value,
    )
    reference = run(
        """
        import numpy as np
        from bitk import _codecs
        w = np.random.default_rng(0).standard_normal((512, 4096)).astype(np.float32)
        print(_codecs.abs_sum(w), _codecs.ternarize(w)[1])
        """,
        BITK_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference.stdout


@pytest.mark.parametrize("torch_loaded", [False, True], ids=["own-pool", "torch-openmp"])
def test_the_thread_pool_survives_fork_and_reports_errors(torch_loaded):
    """The threads persist between calls (bitk's pool, or torch's OpenMP team once torch is loaded):
    a forked child (which has none of them) runs its own pool and gets the parent's results; an
    error raised in another thread's chunk reaches the caller, and the threads keep working."""
    proc = run(
        ("import torch\n" if torch_loaded else "")
        + textwrap.dedent(
            """
        import os
        import numpy as np
        from bitk import _codecs
        w = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
        want = _codecs.ternarize(w)
        pid = os.fork()
        if pid == 0:
            got = _codecs.ternarize(w)
            os._exit(0 if got[1] == want[1] and (got[0] == want[0]).all() else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        bad = w.copy()
        bad[1000, 7] = np.nan  # in the last thread's share
        try:
            _codecs.ternarize(bad)
        except ValueError as e:
            assert "NaN" in str(e), e
        else:
            raise AssertionError("no error")
        got = _codecs.ternarize(w)
        assert got[1] == want[1] and (got[0] == want[0]).all()
        print("same")
        """
        ),
        BITK_NUM_THREADS="4",
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr
