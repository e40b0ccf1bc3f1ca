"""bench/bench_runtime.py without the runtimes: its parsing of llama-bench / llama-perplexity output
(captured from the pinned bitnet.cpp fork, ~/.cache/bitk-runtimes/oracle, on bitk's tiny preset) and
its exit status 2 with one line when a runtime folder holds no binaries."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("bench_runtime_under_test", BENCH / "bench_runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


br = _load()

# `llama-bench -m tiny.gguf -p 256 -n 0 -t 2 -r 3 -o json` (stdout), a loaded 2-core machine
LLAMA_BENCH_JSON = """\
[
  {
    "build_commit": "unknown",
    "build_number": 0,
    "cuda": false,
    "vulkan": false,
    "kompute": false,
    "metal": false,
    "sycl": false,
    "rpc": "0",
    "gpu_blas": false,
    "blas": false,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "model_filename": "tiny.gguf",
    "model_type": "bitnet-b1.58 ?B I2_S - 2 bpw ternary",
    "model_size": 5007232,
    "model_n_params": 5249280,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": 99,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": false,
    "tensor_split": "0.00",
    "use_mmap": true,
    "embeddings": false,
    "n_prompt": 256,
    "n_gen": 0,
    "test_time": "2026-12-05T08:37:44Z",
    "avg_ns": 94788710,
    "stddev_ns": 34424156,
    "avg_ts": 2936.268062,
    "stddev_ts": 990.296645,
    "samples_ns": [ 132703480, 65493279, 86169371 ],
    "samples_ts": [ 1929.11, 3908.8, 2970.89 ]
  }
]
"""

# `llama-bench -m tiny.gguf -p 256 -n 0 -t 2 -r 3 -o md` (stdout)
LLAMA_BENCH_MD = """\
| model                          |       size |     params | backend    | threads |          test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ------: | ------------: | -------------------: |
| bitnet-b1.58 ?B I2_S - 2 bpw ternary |   4.78 MiB |     5.25 M | CPU        |       2 |         pp256 |     3626.81 ± 244.61 |

build: unknown (0)
"""

# `llama-perplexity -m tiny.gguf -f text.txt -c 256 -b 256 -t 2 --chunks 6` (stderr, from system_info on)
LLAMA_PERPLEXITY = """\
system_info: n_threads = 2 (n_threads_batch = 2) / 2 | AVX = 1 | AVX_VNNI = 0 | AVX2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | FMA = 1 | NEON = 0 | SVE = 0 | ARM_FMA = 0 | F16C = 1 | FP16_VA = 0 | RISCV_VECT = 0 | WASM_SIMD = 0 | BLAS = 0 | SSE3 = 1 | SSSE3 = 1 | VSX = 0 | MATMUL_INT8 = 0 | LLAMAFILE = 1 |
perplexity: tokenizing the input ..
perplexity: tokenization took 189.435 ms
perplexity: calculating perplexity over 6 chunks, n_ctx=256, batch_size=256, n_seq=1
perplexity: 0.03 seconds per pass - ETA 0.00 minutes
[1]4305.5015,[2]4263.2072,[3]4213.6474,[4]4213.3043,[5]4252.6563,[6]4286.9620,
Final estimate: PPL = 4286.9620 +/- 49.06315

llama_perf_context_print:        load time =      17.31 ms
llama_perf_context_print: prompt eval time =     170.02 ms /  1536 tokens (    0.11 ms per token,  9034.39 tokens per second)
llama_perf_context_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
llama_perf_context_print:       total time =     367.99 ms /  1537 tokens
"""

# the same with a text of 215 tokens and --chunks 5: the tool still exits 0
LLAMA_PERPLEXITY_TOO_SHORT = """\
perplexity: tokenizing the input ..
perplexity: tokenization took 0.671 ms
perplexity: you need at least 512 tokens to evaluate perplexity with a context of 256
perplexity: the data file you provided tokenizes to only 215 tokens

llama_perf_context_print:        load time =      14.69 ms
llama_perf_context_print: prompt eval time =       0.00 ms /     1 tokens (    0.00 ms per token,      inf tokens per second)
llama_perf_context_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
llama_perf_context_print:       total time =       0.81 ms /     2 tokens
"""


def test_llama_bench_json_gives_the_median_of_its_samples():
    res = br.parse_llama_bench_json(LLAMA_BENCH_JSON, 256)
    assert res["samples"] == pytest.approx([256e9 / 132703480, 256e9 / 65493279, 256e9 / 86169371])
    assert res["tokens_per_s"] == pytest.approx(256e9 / 86169371) == pytest.approx(2970.89, abs=0.01)
    assert res["tokens_per_s"] == statistics.median(res["samples"])
    assert res["threads"] == 2 and res["stat"] == "median of 3"
    with pytest.raises(br.RuntimeToolError, match="no pp512 test"):
        br.parse_llama_bench_json(LLAMA_BENCH_JSON, 512)
    with pytest.raises(br.RuntimeToolError, match="no JSON"):
        br.parse_llama_bench_json(LLAMA_BENCH_MD, 256)


def test_llama_bench_markdown_gives_its_mean():
    res = br.parse_llama_bench_markdown(LLAMA_BENCH_MD, 256)
    assert res["tokens_per_s"] == 3626.81 and res["stddev"] == 244.61 and res["threads"] == 2
    with pytest.raises(br.RuntimeToolError, match="no pp128 row"):
        br.parse_llama_bench_markdown(LLAMA_BENCH_MD, 128)


def test_llama_perplexity_gives_prompt_tokens_per_second_over_all_chunks():
    res = br.parse_llama_perplexity(LLAMA_PERPLEXITY, tokens=256, chunks=6)
    assert res["prompt_eval_tokens"] == 1536 and res["prompt_eval_ms"] == 170.02
    assert res["tokens_per_s"] == 9034.39  # the tool's own figure; 1536 tokens / 170.02 ms rounded
    assert res["tokens_per_s"] == pytest.approx(1536 / 0.17002, rel=1e-4)
    assert res["chunks"] == 6 and res["n_ctx"] == 256 and res["n_batch"] == 256
    assert res["perplexity"] == pytest.approx(4286.9620)
    with pytest.raises(br.RuntimeToolError, match="ran 6 chunks, expected 5"):
        br.parse_llama_perplexity(LLAMA_PERPLEXITY, tokens=256, chunks=5)
    with pytest.raises(br.RuntimeToolError, match="expected n_ctx=512"):
        br.parse_llama_perplexity(LLAMA_PERPLEXITY, tokens=512, chunks=6)
    with pytest.raises(br.RuntimeToolError, match="too short: you need at least 512 tokens.*only 215 tokens"):
        br.parse_llama_perplexity(LLAMA_PERPLEXITY_TOO_SHORT, tokens=256, chunks=5)


def test_runtime_commands_time_one_sequence_of_p_tokens_per_batch():
    exe, gguf, text = Path("/rt/llama-perplexity"), Path("m.gguf"), Path("t.txt")
    cmd = br.llama_perplexity_command(exe, gguf, text, 256, 2, 5)
    assert cmd[1:] == ["-m", "m.gguf", "-f", "t.txt", "-c", "256", "-b", "256", "-t", "2", "--chunks", "5"]
    cmd = br.llama_bench_command(Path("/rt/llama-bench"), gguf, 256, 1, 5)
    assert cmd[1:] == ["-m", "m.gguf", "-p", "256", "-n", "0", "-t", "1", "-r", "5", "-o", "json"]


def test_binaries_are_found_in_bin_folders(tmp_path):
    deep = tmp_path / "a" / "build" / "bin"
    deep.mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    for exe in (deep / "llama-perplexity", tmp_path / "bin" / "llama-bench", deep / "llama-bench"):
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (tmp_path / "llama-bench").write_text("not executable")
    assert br.find_binaries([tmp_path]) == {
        "llama-bench": tmp_path / "bin" / "llama-bench",
        "llama-perplexity": deep / "llama-perplexity",
    }
    assert br.find_binaries([tmp_path / "missing", deep]) == {
        "llama-bench": deep / "llama-bench",
        "llama-perplexity": deep / "llama-perplexity",
    }


def test_cpu_flags_of_interest():
    info = br.cpu_info("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 sse\n")
    assert info["cpu"] == "AMD EPYC"
    assert info["flags"] == {
        "avx2": True,
        "avx512f": True,
        "avx512_vnni": True,
        "avx_vnni": False,
        "avx512_bf16": True,
        "amx_int8": False,
    }


def test_no_binaries_exits_2_with_one_line(tmp_path):
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_runtime.py"), "--runtime", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_runtime: no bitnet.cpp binaries"), proc.stderr
    assert str(tmp_path) in lines[0] and "Traceback" not in proc.stderr
