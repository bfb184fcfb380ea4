"""What the MUSE and RWKU evaluators share: reading their local files, batched greedy generation, per-token
likelihoods, next-token choices and completion scores. The metrics computed from these live in their own
modules (:mod:`.text_overlap`, :mod:`.mia`, :mod:`.divergence`, :mod:`.utility`), the tables in :mod:`.results`.

Every model call here is batched: generation with left padding and the KV cache, likelihoods with right
padding, each with a progress bar. On a GPU that runs out of memory a batch is halved and run again
(:class:`Batches`); inputs go to the device of the model's first parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unilogit.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

# --------------------------------------------------------------------------------------------- data


def read_json_records(path: Path, missing: str) -> list[Any]:
    """The JSON list in a benchmark's local file; ``missing`` is the one-line error when the file is absent."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): fix the file") from None


def check_records(records: Any, where: str, fields: Sequence[str], what: str) -> None:
    """One-line errors unless ``records`` is a list of objects that all have ``fields`` (``what`` needs them)."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{where} must be a JSON list of records (objects)")
    for i, record in enumerate(records):
        missing = [name for name in fields if name not in record]
        if missing:
            raise ConfigError(f"{where} record {i} lacks field(s) {', '.join(missing)}: {what} needs them")


# -------------------------------------------------------------------------------------- aggregation


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a metric of an empty split)."""
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------- models


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where inputs go)."""
    return next(model.parameters()).device


def ensure_pad_token(tokenizer: Any) -> None:
    """Use eos as the pad token when the tokenizer has none."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Decode rows of token ids with special tokens skipped."""
    return tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


class Batches:
    """Runs a function over consecutive batches of a list, with a progress bar: "as large as memory allows".

    On a CUDA out-of-memory error the batch size is halved and the same batch run again, and the smaller size
    is kept for the batches after it. Elsewhere (the CPU) every batch holds exactly ``batch_size`` items (the
    last one fewer), so results are those of fixed batches.
    """

    def __init__(self, batch_size: int, total: int, desc: str) -> None:
        self.size = batch_size
        self.desc = desc
        self.bar = tqdm(total=total, desc=desc, leave=False)

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def map(self, fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
        """``fn`` of each batch of ``items``, concatenated (``fn`` returns one result per item)."""
        out: list[R] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.size]
            try:
                results: list[R] | None = fn(chunk)
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise ConfigError(
                        f"{self.desc}: out of GPU memory with batch size 1; evaluate with --dtype bfloat16, on a "
                        "GPU with more free memory, or on several GPUs"
                    ) from None
                results = None
            if results is None:  # outside the except block, so the failed batch's tensors are freed first
                torch.cuda.empty_cache()
                self.size //= 2
                tqdm.write(f"[unilogit] {self.desc}: out of GPU memory; batch size lowered to {self.size}")
                continue
            out.extend(results)
            start += len(chunk)
            self.bar.update(len(chunk))
        return out


@contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[Any]:
    """``tokenizer`` padding on ``side`` (left for generation, right for likelihoods), with a pad token
    (:func:`ensure_pad_token`); its ``padding_side`` is restored afterwards."""
    ensure_pad_token(tokenizer)
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = previous


def _encode(
    tokenizer: Any, texts: Sequence[str], add_special_tokens: bool = True, max_length: int | None = None
) -> Any:
    return tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=add_special_tokens,
        truncation=max_length is not None,
        max_length=max_length,
    )


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    desc: str = "generate",
    stop_strings: Sequence[str] | None = None,
    add_special_tokens: bool = True,
    stop_ids: Sequence[int] | None = None,
    share_prefix: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new tokens, decoded with special tokens skipped).

    Batched with left padding and an attention mask, KV cache on (:class:`Batches`). By default prompts are
    tokenized with the tokenizer's special tokens (BOS where it has one), as MUSE does; chat-templated prompts
    already hold theirs (``add_special_tokens=False``). A row also ends at the model's eos (the end of turn), or
    at any of ``stop_ids`` instead when they are given.
    If the tokenizer has no pad token, eos becomes the pad token (and stays so); ``tokenizer.padding_side``
    is restored afterwards.

    With ``share_prefix`` (prompts that start alike, such as few-shot prompts), the tokens every prompt of a
    batch starts with run once, and the rows continue from copies of that KV cache, each row laid out as
    ``prefix, padding, own tokens`` under the attention mask, so positions stay those of the unpadded prompt.
    The continuations equal the plain batched ones up to float rounding, at a fraction of the prompt cost.
    """
    model.eval()
    device = model_device(model)

    def run(batch: Sequence[str]) -> list[str]:
        cache = None
        if share_prefix:
            input_ids, attention_mask, cache = _shared_prefix_inputs(model, tokenizer, batch, add_special_tokens)
        if cache is None:
            enc = _encode(tokenizer, batch, add_special_tokens)
            input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
            **({"eos_token_id": list(stop_ids)} if stop_ids else {}),
            # A batch ends once every row has produced a stop string: greedy rows are independent, so
            # the text before the stop is the same as without it.
            **({"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}),
        )
        return decode(tokenizer, generated[:, input_ids.shape[1] :])

    with padding_side(tokenizer, "left"), Batches(batch_size, len(prompts), desc) as batches:
        return batches.map(run, prompts)


@torch.no_grad()
def _shared_prefix_inputs(
    model: torch.nn.Module, tokenizer: Any, batch: Sequence[str], add_special_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(input_ids, attention_mask, cache)`` for :func:`generate_greedy`'s ``share_prefix``: the batch's
    common token prefix (at least :data:`MIN_SHARED_PREFIX` tokens, leaving every row one of its own) run
    once and its cache repeated per row; ``cache`` is None when the rows share too little."""
    device = model_device(model)
    rows = tokenizer(list(batch), add_special_tokens=add_special_tokens)["input_ids"]
    shared = min(len(row) for row in rows) - 1
    for row in rows[1:]:
        shared = min(shared, _common_length(rows[0], row))
    if shared < MIN_SHARED_PREFIX:
        return torch.empty(0), torch.empty(0), None
    cache = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(rows))
    width = max(len(row) for row in rows) - shared
    pads = [width - (len(row) - shared) for row in rows]
    ids = [row[:shared] + [tokenizer.pad_token_id] * pad + row[shared:] for row, pad in zip(rows, pads, strict=True)]
    mask = [[1] * shared + [0] * pad + [1] * (len(row) - shared) for row, pad in zip(rows, pads, strict=True)]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device), cache


def map_right_padded(
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_length: int | None,
    desc: str,
    fn: Callable[[torch.Tensor, torch.Tensor, list[int]], list[R]],
) -> list[R]:
    """``fn(input_ids, attention_mask, lengths)`` over right-padded batches of ``texts`` (special tokens added,
    ``max_length`` truncates), one result per text, in :class:`Batches`."""

    def run(batch: Sequence[str]) -> list[R]:
        enc = _encode(tokenizer, batch, max_length=max_length)
        return fn(enc["input_ids"], enc["attention_mask"], enc["attention_mask"].sum(dim=1).tolist())

    with padding_side(tokenizer, "right"), Batches(batch_size, len(texts), desc) as batches:
        return batches.map(run, texts)


def _per_text(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_length: int | None,
    desc: str,
    reduce: Callable[[torch.Tensor, torch.Tensor], R],
) -> list[R]:
    """Per text, ``reduce(log_softmax [n−1, V] in fp32, targets [n−1])`` over the positions that predict a token."""
    model.eval()
    device = model_device(model)

    def run(input_ids: torch.Tensor, attention: torch.Tensor, lengths: list[int]) -> list[R]:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        return [
            reduce(F.log_softmax(logits[row, : n - 1].float(), dim=-1), input_ids[row, 1:n].to(logits.device))
            for row, n in enumerate(lengths)
        ]

    return map_right_padded(tokenizer, texts, batch_size, max_length, desc, run)


@torch.no_grad()
def token_log_probs(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "log-probs",
) -> list[torch.Tensor]:
    """Per text, the 1-D fp32 CPU tensor of log p(x_t | x_<t) for t = 1..n−1 (n tokens, special tokens
    included as MUSE's ``tokenizer.encode``; no padding positions). ``max_length`` truncates."""

    def picked(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return log_probs.gather(-1, targets[:, None])[:, 0].cpu()

    return _per_text(model, tokenizer, texts, batch_size, max_length, desc, picked)


@torch.no_grad()
def token_statistics(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "token statistics",
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per text, ``(log p(x_t), μ_t, σ_t)`` as 1-D CPU tensors, with μ_t = E_{v∼p}[log p(v)] and
    σ_t² = E_{v∼p}[(log p(v))²] − μ_t² under the model's next-token distribution p at position t (Min-K%++)."""

    def statistics(log_probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = log_probs.exp()
        mu = (probs * log_probs).sum(-1)
        sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
        return log_probs.gather(-1, targets[:, None])[:, 0].cpu(), mu.cpu(), sigma.cpu()

    return _per_text(model, tokenizer, texts, batch_size, max_length, desc, statistics)


# Rows that share at least this many leading tokens (a few-shot header, a primer, one question's choices) are
# scored from one forward pass of that prefix and its KV cache: the shots are then encoded once, not per row.
MIN_SHARED_PREFIX = 16


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _prefix_groups(sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Consecutive rows grouped by a shared prefix: ``(prefix length, row indices)``. The prefix stops at the
    first scored position of every row (so each row's scored logits come from its prefix's last position
    and its own tokens) and leaves every row at least one token of its own."""
    groups: list[tuple[int, list[int]]] = []
    for i, row in enumerate(sequences):
        limit = min(starts[i] + 1, len(row) - 1)
        if groups:
            length, members = groups[-1]
            shared = min(length, limit, _common_length(sequences[members[0]], row))
            if shared >= MIN_SHARED_PREFIX:
                groups[-1] = (shared, [*members, i])
                continue
        groups.append((limit, [i]))
    return [(length if len(members) > 1 else 0, members) for length, members in groups]


@torch.no_grad()
def logits_at(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    batch_size: int = 8,
    desc: str = "scoring",
) -> list[torch.Tensor]:
    """For each token row, its fp32 CPU logits at positions ``start .. len(row) - 1`` (``[len - start, V]``).

    Rows sharing a long prefix (:data:`MIN_SHARED_PREFIX`) run it once with batch 1; the rest of each row
    then runs right-padded on a copy of its KV cache, and only at the positions asked for does the model
    compute logits. The values equal one forward pass per row up to float rounding.
    """
    import copy

    model.eval()
    device = model_device(model)
    pad = 0  # any id: padded positions are masked out and never scored
    by_row: dict[int, torch.Tensor] = {}
    with Batches(batch_size, len(sequences), desc) as batches:
        for length, members in _prefix_groups(sequences, starts):
            cache, last = None, None
            if length:
                prefix = torch.tensor([sequences[members[0]][:length]], device=device)
                run = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
                cache, last = run.past_key_values, run.logits[0, -1:].float().cpu()

            def score(rows: Sequence[int], length: int = length, cache: Any = cache, last: Any = last) -> list:
                width = max(len(sequences[r]) - length for r in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention = torch.zeros((len(rows), length + width), dtype=torch.long)
                attention[:, :length] = 1
                for j, r in enumerate(rows):
                    own = sequences[r][length:]
                    input_ids[j, : len(own)] = torch.tensor(own)
                    attention[j, length : length + len(own)] = 1
                # Logits only from the earliest position asked for: the lm head is the costliest layer per token.
                first = min(max(starts[r], length) for r in rows)
                kwargs: dict[str, Any] = {"logits_to_keep": length + width - first}
                if cache is not None:
                    kwargs["past_key_values"] = copy.deepcopy(cache)
                    kwargs["past_key_values"].batch_repeat_interleave(len(rows))
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs).logits
                logits = logits.float().cpu()  # logits[:, 0] is at position `first`
                out = []
                for j, r in enumerate(rows):
                    mine = logits[j, max(starts[r], length) - first : len(sequences[r]) - first]
                    out.append(torch.cat([last, mine]) if length and starts[r] == length - 1 else mine)
                return out

            by_row.update(zip(members, batches.map(score, members), strict=True))
    return [by_row[r] for r in range(len(sequences))]


def next_token_logits(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 8,
    add_special_tokens: bool = True,
    desc: str = "next token",
) -> torch.Tensor:
    """``[len(prompts), V]`` fp32 CPU logits of the token after each prompt (see :func:`logits_at`)."""
    sequences = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    rows = logits_at(model, sequences, [len(s) - 1 for s in sequences], batch_size, desc)
    return torch.cat(rows) if rows else torch.empty(0)


def completion_log_probs(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 8,
    add_special_tokens: bool = True,
    desc: str = "completions",
) -> list[float]:
    """Σ_t log p(c_t | prompt, c_<t) over the completion's tokens, for each ``(prompt, completion)``.

    The prompt and the completion are tokenized separately and joined, so the completion's tokens are
    exactly its own tokenization whatever the prompt ends with.
    """
    heads, tails = [], []
    for prompt, completion in pairs:
        tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not tail:
            raise ValueError(f"completion {completion!r} has no tokens")
        heads.append(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        tails.append(tail)
    sequences = [h + t for h, t in zip(heads, tails, strict=True)]
    # The logits at positions len(head)-1 .. len(head)+len(tail)-2 predict the completion's tokens.
    rows = logits_at(model, sequences, [len(h) - 1 for h in heads], batch_size, desc)
    return [
        float(F.log_softmax(row[:-1], dim=-1).gather(-1, torch.tensor(tail)[:, None]).sum())
        for row, tail in zip(rows, tails, strict=True)
    ]
