"""bitk models in lm-evaluation-harness (lm-eval 0.4.x): the ``bitk`` model class and task runs.

    results = run_tasks(BitkLM(pretrained="runs/tiny/final", numerics="i2s"), ["sst2"], limit=100)
    results = run_tasks(BitkLM(model=model, tokenizer=tok), ["sst2"], limit=100)
    lm_eval.simple_evaluate(model="bitk", model_args="pretrained=runs/tiny/final,numerics=i2s", tasks=["sst2"])

`BitkLM` scores as lm-eval's HFLM does: a (context, continuation) pair is encoded whole and split
where the context's tokens end, the context's trailing spaces moved onto the continuation; the
tokenizer's BOS is prepended when its config adds one (`bitk.data.document_tokens`), and an empty
context or a rolling window starts from BOS, else EOS. Requests run longest first in right-padded
batches; results come back in the request order. Generation is greedy unless a task asks to
sample (`bitk.generate.generate`). Importing this module registers the model class under the
name "bitk" and imports lm_eval: `bitk.eval.load_harness` turns a missing install into one line.
Usage: docs/eval.md "Task evaluation".
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

__all__ = [
    "MAX_LENGTH_CAP",
    "BitkLM",
    "check_tasks",
    "results_record",
    "run_tasks",
    "task_manager",
    "task_scores",
]

MAX_LENGTH_CAP = 4096
"""The default window (``max_length``) is the model's max_position_embeddings up to this many tokens."""
DEFAULT_MAX_GEN_TOKS = 256
"""Tokens a generate_until request may generate when its task names no ``max_gen_toks``."""
DEFAULT_SEED = 1234
"""Seed of a sampled generation whose task names none (lm-eval's default torch seed)."""


def _positive_int(name: str, value: Any) -> int:
    """``value`` (an int or its text, as lm-eval's ``--model_args`` pass it) as a positive int; ValueError if not."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


@register_model("bitk")
class BitkLM(TemplateLM):
    """A bitk model as an lm-evaluation-harness language model.

    From a file: ``BitkLM(pretrained=PATH)`` loads a bitk checkpoint, Hugging Face folder, hub id
    or .gguf file (`bitk.generate.loading.load_for_inference`). From memory:
    ``BitkLM(model=causal_lm, tokenizer=tok, tokenizer_dir=folder)``. ``numerics`` (train, i2s,
    tq, f16, float; None keeps the model's) sets what every BitLinear computes, so that i2s / tq
    scores predict the GGUF file's; on an in-memory model the setting stays after evaluation (the
    caller restores it). ``max_length``: the longest window scored at once (default the model's
    max_position_embeddings, at most `MAX_LENGTH_CAP`). ValueError for bad arguments.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        tokenizer_dir: str | Path | None = None,
        numerics: str | None = None,
        pad: str = "auto",
        full_precision: bool = False,
        batch_size: int | str = 1,
        max_length: int | str | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        from bitk.data import document_tokens
        from bitk.generate.loading import load_for_inference, set_model_numerics

        del max_batch_size  # lm-eval passes it to every model class; batches here have one fixed size
        if (pretrained is None) == (model is None):
            raise ValueError("BitkLM needs either pretrained=PATH or model=CausalLM (with tokenizer=), not both")
        if isinstance(full_precision, str):
            full_precision = full_precision.lower() in ("1", "true", "yes")
        if pretrained is not None:
            loaded = load_for_inference(
                pretrained, numerics=numerics, pad=pad, full_precision=full_precision, tokenizer=tokenizer
            )
            model, tokenizer, tokenizer_dir = loaded.model, loaded.tokenizer, loaded.tokenizer_dir
            self.numerics, self.source = loaded.numerics, loaded.source
            self._loaded = loaded  # keeps a GGUF's vocabulary folder alive
            if device is None and torch.cuda.is_available():
                device = "cuda"
        else:
            if tokenizer is None or isinstance(tokenizer, (str, Path)):
                raise ValueError("BitkLM(model=...) needs the model's tokenizers.Tokenizer as tokenizer=")
            self.numerics = set_model_numerics(model, numerics, pad=pad) if numerics is not None else "as set"
            self.source = str(getattr(model.config, "_name_or_path", "") or "in-memory model")
            if tokenizer_dir is None:
                tokenizer_dir = getattr(model, "tokenizer_dir", None)
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_dir = None if tokenizer_dir is None else Path(tokenizer_dir)
        framing = document_tokens(tokenizer, self.tokenizer_dir, model.config.eos_token_id)
        self._eos, self._bos = framing.eos, framing.bos
        self._bos_text = None if self._bos is None else tokenizer.id_to_token(self._bos)
        self.batch_size = _positive_int("batch_size", batch_size)
        limit = model.config.max_position_embeddings
        self._max_length = min(limit, MAX_LENGTH_CAP) if max_length is None else _positive_int("max_length", max_length)
        if self._max_length > limit:
            raise ValueError(f"max_length {self._max_length} exceeds the model's max_position_embeddings ({limit})")
        if self._max_length < 2:
            raise ValueError("max_length must be at least 2")

    # ------------------------------------------------------------------ what lm-eval asks of a model

    @property
    def eot_token_id(self) -> int:
        return self._eos

    @property
    def prefix_token_id(self) -> int:
        return self._bos if self._bos is not None else self._eos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer_dir or "bitk")

    def get_model_info(self) -> dict[str, Any]:
        """What simple_evaluate records about the model."""
        return {"model_source": self.source, "numerics": self.numerics, "max_length": self.max_length}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``, with the BOS the tokenizer config adds unless told not to (or already there)."""
        ids = self.tokenizer.encode(string, add_special_tokens=False).ids
        if self._bos is None or add_special_tokens is False:
            return ids
        if add_special_tokens is None and string.startswith(self._bos_text):
            return ids
        return [self._bos, *ids]

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per request.

        ``requests``: (cache key, context ids, continuation ids). A pair longer than max_length + 1
        loses context tokens from the left. Longest first, ``batch_size`` rows right-padded per
        forward; the results are in the order of ``requests``.
        """
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        device = self.device
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="bitk: loglikelihood requests")
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    rows, spans = [], []
                    for i in chunk:
                        _, context, continuation = requests[i]
                        if not continuation:
                            raise ValueError("a loglikelihood request has an empty continuation")
                        if len(continuation) > self.max_length:
                            raise ValueError(
                                f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}"
                            )
                        row = (context + continuation)[-(self.max_length + 1) :][:-1]
                        rows.append(row)
                        spans.append((len(row) - len(continuation), continuation))
                    width = max(len(r) for r in rows)
                    ids = torch.full((len(rows), width), self._eos, dtype=torch.long)
                    for r, row in enumerate(rows):
                        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
                    out = self.model(ids.to(device), logits=False)
                    for r, (i, (first, continuation)) in enumerate(zip(chunk, spans, strict=True)):
                        hidden = out.last_hidden[r, first : first + len(continuation)]
                        logprobs = out.head(hidden).float().log_softmax(-1)
                        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
                        score = logprobs.gather(-1, target[:, None]).sum().item()
                        greedy = bool((logprobs.argmax(-1) == target).all())
                        results[i] = (score, greedy)
                        key = requests[i][0]
                        if key is not None:
                            self.cache_hook.add_partial("loglikelihood", key, results[i])
                    bar.update(len(chunk))
        finally:
            bar.close()
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string: windows of max_length tokens (lm-eval's rolling windows),
        every token scored once, the first conditioned on BOS (or EOS)."""
        windows: list[tuple[Any, list[int], list[int]]] = []
        owner: list[int] = []
        for index, request in enumerate(requests):
            (string,) = request.args
            tokens = self.tok_encode(string, add_special_tokens=False)
            pieces = get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
            )
            for context, continuation in map(make_disjoint_window, pieces):
                windows.append((None, context, continuation))
                owner.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (score, _) in zip(owner, scores, strict=True):
            totals[index] += score
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Text generated for each (context, gen_kwargs) request, cut before the first ``until`` string.

        Greedy unless gen_kwargs say ``do_sample`` with a temperature above 0 (default 1; top_k,
        top_p and seed as given, the seed 1234 when none is);
        at most ``max_gen_toks`` tokens (default 256); EOS ends a generation too. The context
        loses tokens from the left to leave room for them within max_length.
        """
        from bitk.generate import generate

        outputs = []
        was_training = self.model.training
        self.model.eval()
        try:
            for request in tqdm(requests, disable=disable_tqdm, desc="bitk: generate_until requests"):
                context, gen_kwargs = request.args
                options = dict(gen_kwargs or {})
                until = options.pop("until", None)
                until = [until] if isinstance(until, str) else list(until or [])
                max_gen = options.pop("max_gen_toks", options.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS))
                max_gen = min(_positive_int("max_gen_toks", max_gen), self.max_length - 1)
                do_sample = bool(options.get("do_sample", False))
                temperature = float(options.get("temperature", 1.0 if do_sample else 0.0) or 0.0)
                sample = do_sample and temperature > 0
                prompt = self.tok_encode(context)[-(self.max_length - max_gen) :]
                sampling: dict[str, Any] = {"greedy": not sample}
                if sample:  # seeded, so that a sampled run repeats (lm-eval's own torch seed by default)
                    top_k, top_p = options.get("top_k"), options.get("top_p")
                    sampling.update(
                        temperature=temperature,
                        top_k=int(top_k) if top_k else None,
                        top_p=float(top_p) if top_p is not None else None,
                        seed=int(options.get("seed", DEFAULT_SEED)),
                    )
                with torch.inference_mode():
                    result = generate(
                        self.model,
                        self.tokenizer,
                        prompt,
                        max_new_tokens=max_gen,
                        stop=until,
                        tokenizer_dir=self.tokenizer_dir,
                        eos_token_ids=[self._eos],
                        **sampling,
                    )
                outputs.append(result.text)
                self.cache_hook.add_partial("generate_until", request.args, result.text)
        finally:
            self.model.train(was_training)
        return outputs


# ---------------------------------------------------------------------- task lists and runs


@functools.cache
def task_manager(include_path: str | None = None) -> Any:
    """lm-eval's TaskManager (its own tasks plus those under ``include_path``), built once per process:
    indexing lm-eval's task folder takes seconds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """The TaskManager that knows every name of ``tasks``; ValueError naming the unknown ones and close matches."""
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise ValueError(f"include path {include_path}: no such folder")
    manager = task_manager(None if include_path is None else str(Path(include_path).expanduser().resolve()))
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        described = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            described.append(f"{name} (did you mean {', '.join(close)}?)" if close else name)
        raise ValueError(
            f"unknown task{'s' if len(unknown) > 1 else ''}: {'; '.join(described)} (lm-eval's task list: "
            "`lm_eval ls tasks`; local task YAMLs: an include path)"
        )
    return manager


def run_tasks(
    lm: BitkLM,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 100000,
    verbosity: str = "WARNING",
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``lm`` on ``tasks`` (at most ``limit`` documents each); its results dict."""
    import lm_eval

    manager = check_tasks(tasks, include_path)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=bootstrap_iters,
        verbosity=verbosity,
    )
    assert results is not None  # one process: rank 0
    return results


def results_record(results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON-ready part of simple_evaluate's results ("results", "versions", "n-shot", "configs",
    "higher_is_better", "n-samples", with lm-eval's serialisation of what JSON lacks) plus ``extra``."""
    import json

    from lm_eval.utils import handle_non_serializable

    keep = ("results", "groups", "versions", "n-shot", "configs", "higher_is_better", "n-samples")
    record = {**extra, **{k: results[k] for k in keep if k in results}}
    return json.loads(json.dumps(record, default=handle_non_serializable))


def task_scores(results: dict[str, Any]) -> dict[str, float]:
    """``tasks/<task>/<metric>`` -> value for every metric of simple_evaluate's results (keys
    ``metric,filter``; the ",none" filter dropped, others kept as ``<metric>,<filter>``; no stderr)."""
    scores = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            if (
                not comma
                or metric.endswith("_stderr")
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                continue
            name = metric if filter_name in ("", "none") else f"{metric},{filter_name}"
            scores[f"tasks/{task}/{name}"] = float(value)
    return scores
