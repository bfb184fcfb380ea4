"""Property and fuzz tests (hypothesis): the losses on random inputs, and config parsing on random dictionaries.

Losses. Every public loss of :mod:`unilogit.losses` on random small shapes (``B`` 1-3, ``T`` 1-6, ``V``
2-12), random ``-100`` masks with all-masked rows and fully masked batches, logits from 1e-3 to ±1e4,
in fp32, bf16 and fp16, with random hyperparameters. Each must give a finite value and finite gradients,
no gradient at unsupervised positions, and agree with the straightforward formulas of
:mod:`unilogit.losses_reference` evaluated in float64 on the same input values.

Tolerances. The lean losses upcast 16-bit inputs to fp32 exactly and compute in fp32; the reference is
float64 on the same values, so it is the exact answer up to 1e-16. A loss is a sum of per-token terms,
each Lipschitz in the logits with constant at most 2 (the L1 norm of softmax − onehot or of p − q), and
fp32 rounds each intermediate of magnitude ``M`` (the largest logit; shifted logits reach 2M) to within
2⁻²⁴·2M. With NPO's sequence sums a row adds up to ``T`` such terms. So a value may be off by
``rtol·|value| + K·2⁻²⁴·(1 + M)·T``; ``rtol`` = 1e-5 and ``K`` = 64 leave a margin of 15× over the
largest error seen in 400 random batches per loss (the ratio is printed on failure). Gradients are
probabilities, bounded by 1: their fp32 error is a few 2⁻²⁴ relative to the largest entry, and 16-bit
gradients are the fp32 ones rounded to the input dtype at most twice (the kernel's ∂ℓ/∂z, then its
scaling by the incoming gradient), so they get twice that dtype's unit roundoff (2⁻⁸ for bf16, 2⁻¹¹ for
fp16) relative to the largest entry on top (seen: two thirds of that). That is the only place where
16-bit inputs are looser.

Config. Random dictionaries of keys (valid keys, near misses of them, random strings, non-string keys)
and values (random types) go through what ``unilogit train`` runs before any model or data is loaded
(:func:`unilogit.config.check_keys`, :func:`unilogit.launch.resolve_config`,
:func:`unilogit.stage.entry.parse_unlearn_config`, as :func:`unilogit.launch.train` calls them), and random
YAML texts and ``key=value`` overrides through :func:`unilogit.config.load_config`. Each outcome must be a parsed config
or a :class:`~unilogit.errors.ConfigError` whose message is one line; nothing else may escape.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from conftest import ROOT, hypothesis_settings
from unilogit import cli
from unilogit import losses as lean
from unilogit import losses_reference as naive
from unilogit.config import check_keys, load_config, show
from unilogit.errors import ConfigError
from unilogit.launch import resolve_config
from unilogit.stage.args import RETAIN_LOSSES, UnlearningArguments, unlearning_keys
from unilogit.stage.entry import parse_unlearn_config
from unilogit.stage.methods import METHODS, all_hyperparameters

IGNORE = -100
EPS32 = 2.0**-24
GRAD_STEP = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}

SETTINGS = hypothesis_settings(25)
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    logits: torch.Tensor  # [B, T, V], in `dtype`
    ref: torch.Tensor  # [B, T, V], the reference model's logits
    target: torch.Tensor  # [B, T, V], θ_o's logits for Unilogit's "initial" target
    labels: torch.Tensor  # [B, T], -100 where ignored
    beta: float
    delta: float
    gamma: float

    @property
    def scale(self) -> float:
        """The largest logit magnitude, M in the tolerance."""
        return max(float(x.float().abs().max()) if x.numel() else 0.0 for x in (self.logits, self.ref, self.target))


SCALES = [1e-3, 1.0, 10.0, 100.0, 1e4]


@st.composite
def batches(draw, dtypes=(torch.float32, torch.bfloat16, torch.float16), min_vocab: int = 2) -> Batch:
    bsz, seq, vocab = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(min_vocab, 12))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def logits_like(kind: str, scale: float) -> torch.Tensor:
        if kind == "sign":  # every logit at ±scale: softmax ties and 0/1 probabilities
            return torch.where(torch.rand(bsz, seq, vocab, generator=g) < 0.5, -scale, scale)
        if kind == "uniform":
            return (torch.rand(bsz, seq, vocab, generator=g) * 2 - 1) * scale
        return torch.randn(bsz, seq, vocab, generator=g) * scale

    kind = draw(st.sampled_from(["normal", "uniform", "sign"]))
    scale = draw(st.sampled_from(SCALES))
    logits = logits_like(kind, scale)
    # The reference is near the model (as after a few steps) or unrelated, possibly at another scale.
    if draw(st.booleans()):
        ref = logits + logits_like("normal", scale * 0.1)
    else:
        ref = logits_like(draw(st.sampled_from(["normal", "uniform", "sign"])), draw(st.sampled_from(SCALES)))
    target = logits_like(kind, draw(st.sampled_from(SCALES)))

    labels = torch.randint(0, vocab, (bsz, seq), generator=g)
    labels[torch.rand(bsz, seq, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))] = IGNORE
    for b in draw(st.sets(st.integers(0, bsz - 1))):  # all-masked rows
        labels[b] = IGNORE
    beta = draw(st.sampled_from([0.01, 0.1, 1.0, 4.5, 30.0]))
    delta = draw(st.sampled_from([0.0, 0.5, 5.0]))
    gamma = draw(st.sampled_from([0.0, 3.0, 10.0, 100.0]))
    to = lambda x: x.to(dtype)  # noqa: E731
    return Batch(to(logits), to(ref), to(target), labels, beta, delta, gamma)


# name -> loss(module, logits, batch): a 0-dim tensor; each is evaluated with the lean and the reference module.
LOSSES: dict[str, Callable] = {
    "nll": lambda m, z, c: m.nll_loss(z, c.labels),
    "ga": lambda m, z, c: m.ga_loss(z, c.labels),
    # Per-row NLLs weighted by distinct numbers, so the gradient sees every row's value.
    "sequence_nll": lambda m, z, c: (
        m.sequence_nll(z, c.labels)[0].double() * torch.arange(1.0, c.labels.size(0) + 1, dtype=torch.float64)
    ).sum(),
    "npo": lambda m, z, c: m.npo_loss(z, c.ref, c.labels, beta=c.beta),
    "simnpo": lambda m, z, c: m.simnpo_loss(z, c.labels, beta=c.beta, delta=c.delta),
    "undial": lambda m, z, c: m.undial_loss(z, c.ref, c.labels, gamma=c.gamma),
    "unilogit_reverse": lambda m, z, c: m.unilogit_forget_loss(z, c.labels),
    "unilogit_forward": lambda m, z, c: m.unilogit_forget_loss(z, c.labels, divergence="forward"),
    "unilogit_reverse_initial": lambda m, z, c: m.unilogit_forget_loss(z, c.labels, target_logits=c.target),
    "unilogit_forward_initial": lambda m, z, c: m.unilogit_forget_loss(z, c.labels, c.target, "forward"),
    "kl_retain": lambda m, z, c: m.kl_retain_loss(z, c.ref, c.labels),
}
NAMES = list(LOSSES)
# Losses that read a second source's rows, which may be given as the [N, V] supervised rows instead.
WITH_ROWS = {
    "undial": lambda z, c, r, h: lean.undial_loss(z, r, c.labels, gamma=c.gamma),
    "unilogit_reverse_initial": lambda z, c, r, h: lean.unilogit_forget_loss(z, c.labels, target_logits=h),
    "unilogit_forward_initial": lambda z, c, r, h: lean.unilogit_forget_loss(z, c.labels, h, "forward"),
    "kl_retain": lambda z, c, r, h: lean.kl_retain_loss(z, r, c.labels),
}
# Terms with sequence sums (NPO's margin, SimNPO's mean): a row's error adds up over its tokens.
SEQUENCE_SUMS = {"sequence_nll", "npo", "simnpo"}


def _value_and_grad(module, name: str, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.detach().clone().requires_grad_(True)
    out = LOSSES[name](module, z, batch)
    out.backward()
    return out.detach(), z.grad


def _unsupervised(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] True where logits[b, t] predicts no label (the next one is -100, or t is the last position)."""
    mask = torch.ones(labels.shape, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] == IGNORE
    return mask


def _value_tolerance(name: str, batch: Batch, want: float) -> float:
    tokens = batch.labels.size(1) if name in SEQUENCE_SUMS else 1
    weight = batch.labels.size(0) if name == "sequence_nll" else 1  # the rows are weighted 1..B and summed
    tol = 1e-5 * abs(want) + 64 * EPS32 * (1 + batch.scale) * tokens * weight * (1 + weight) / 2
    return tol


# --------------------------------------------------------------------------------------------------
# 1. Every loss: finite, differentiable, zero gradient where nothing is supervised, equal to the formula
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(batch=batches())
def test_loss_is_finite_and_matches_the_straightforward_formula(name: str, batch: Batch) -> None:
    value, grad = _value_and_grad(lean, name, batch.logits, batch)
    assert value.shape == () and math.isfinite(float(value)), float(value)
    assert grad.dtype == batch.logits.dtype and grad.shape == batch.logits.shape
    assert torch.isfinite(grad).all()
    unused = _unsupervised(batch.labels)
    assert torch.equal(grad[unused], torch.zeros_like(grad[unused])), "a position without a label got gradient"
    if bool(unused.all()):  # nothing supervised: 0, and still differentiable
        assert float(value) == 0.0

    exact = replace(batch, logits=batch.logits.double(), ref=batch.ref.double(), target=batch.target.double())
    want, want_grad = _value_and_grad(naive, name, exact.logits, exact)
    tol = _value_tolerance(name, batch, float(want))
    err = abs(float(value) - float(want))
    assert err <= tol, f"value {float(value)!r} vs {float(want)!r}: error {err:.3g} is {err / tol:.3g} of the bound"

    top = float(want_grad.abs().max())
    grad_tol = 2 * GRAD_STEP[batch.logits.dtype] * top + 64 * EPS32 * (1 + top)
    if name == "unilogit_reverse_initial":
        # ∂ℓ/∂z = p·(log p − log p̃ − ℓ) with p̃ from other logits: where p̃ is tiny, log p̃ reaches −2M, and
        # fp32 holds it to 2⁻²⁴·2M, so a moderate p carries that error into the gradient (without this term, 400
        # random batches gave 65× the bound).
        grad_tol += 4 * EPS32 * (1 + batch.scale)
    grad_err = float((grad.double() - want_grad).abs().max())
    assert grad_err <= grad_tol, f"gradient error {grad_err:.3g} is {grad_err / grad_tol:.3g} of the bound"


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_unilogit_built_target_is_exact_in_fp32_when_the_label_leads_by_far(divergence: str) -> None:
    """One position whose label logit leads the others by 1e4: fp32 against float64 on the same values. Forming
    h̃_k = logsumexp_{i≠k} h − log(V−1) at that magnitude missed 1/V by 3.4e-4 relative in fp32; the closed form
    of ``unilogit_target_log_probs`` does not."""
    logits = torch.tensor([[[-10432.0, 9152.0, -13056.0, -11072.0, -12160.0], [0.0] * 5]])
    labels = torch.tensor([[IGNORE, 1]])
    target = logits if divergence == "reverse" else None  # reverse builds p̃ only from given target logits
    got = lean.unilogit_forget_loss(logits, labels, target, divergence)
    want = naive.unilogit_forget_loss(logits.double(), labels, None if target is None else target.double(), divergence)
    assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want)), (float(got), float(want))


# --------------------------------------------------------------------------------------------------
# 2. Structure: rows without labels, chunking and [N, V] reference rows change nothing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(batch=batches(), rows=st.integers(1, 7))
def test_chunk_size_changes_nothing(name: str, batch: Batch, rows: int) -> None:
    """Chunks of 1-7 rows (a batch spans several and ends on a partial one) give the default's value and gradient."""
    value, grad = _value_and_grad(lean, name, batch.logits, batch)
    default = lean.CHUNK_ELEMENTS
    lean.CHUNK_ELEMENTS = rows * batch.logits.size(-1)
    try:
        chunked, chunked_grad = _value_and_grad(lean, name, batch.logits, batch)
    finally:
        lean.CHUNK_ELEMENTS = default
    torch.testing.assert_close(chunked, value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked_grad, grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(batch=batches(), where=st.lists(st.integers(0, 3), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_rows_without_labels_change_nothing(name: str, batch: Batch, where: list[int], seed: int) -> None:
    """All-masked rows with ±1e4 garbage logits, inserted anywhere: the value (token and sequence means skip
    them) and the other rows' gradients stay as they were; the inserted rows get no gradient."""
    assume(batch.labels.size(1) >= 2)
    bsz, seq, vocab = batch.logits.shape
    g = torch.Generator().manual_seed(seed)
    order = sorted(range(bsz + len(where)), key=lambda i: (where[i - bsz] if i >= bsz else i, -i))
    masked = torch.tensor([i >= bsz for i in order])

    def pad(x: torch.Tensor, fill: Callable[[tuple[int, ...]], torch.Tensor]) -> torch.Tensor:
        return torch.cat([x, fill((len(where), *x.shape[1:])).to(x.dtype)])[order]

    garbage = lambda shape: (torch.rand(*shape, generator=g) * 2 - 1) * 1e4  # noqa: E731
    padded = replace(
        batch,
        logits=pad(batch.logits, garbage),
        ref=pad(batch.ref, garbage),
        target=pad(batch.target, garbage),
        labels=pad(batch.labels, lambda shape: torch.full(shape, IGNORE)),
    )
    padded.labels[masked, 0] = 0  # labels[:, 0] is never predicted
    value, grad = _value_and_grad(lean, name, batch.logits, batch)
    padded_value, padded_grad = _value_and_grad(lean, name, padded.logits, padded)
    assert not bool(padded_grad[masked].any())
    if name == "sequence_nll":  # rows are weighted by their place, which the new rows change: compare per row
        nll, counts = lean.sequence_nll(batch.logits, batch.labels)
        padded_nll, padded_counts = lean.sequence_nll(padded.logits, padded.labels)
        assert torch.equal(padded_nll[~masked], nll) and torch.equal(padded_counts[~masked], counts)
        assert not bool(padded_nll[masked].any()) and not bool(padded_counts[masked].any())
        return
    torch.testing.assert_close(padded_value, value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(padded_grad[~masked], grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(WITH_ROWS))
@SETTINGS
@given(batch=batches())
def test_reference_rows_give_the_same_loss(name: str, batch: Batch) -> None:
    """The reference / target logits as their [N, V] supervised rows (what the trainer keeps) change nothing."""
    full_z = batch.logits.clone().requires_grad_(True)
    full = WITH_ROWS[name](full_z, batch, batch.ref, batch.target)
    full.backward()
    rows_z = batch.logits.clone().requires_grad_(True)
    rows = WITH_ROWS[name](
        rows_z, batch, lean.supervised_rows(batch.ref, batch.labels), lean.supervised_rows(batch.target, batch.labels)
    )
    rows.backward()
    assert torch.equal(rows.detach(), full.detach()) and torch.equal(rows_z.grad, full_z.grad)


# --------------------------------------------------------------------------------------------------
# 3. The helpers the trainer calls directly
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(batch=batches())
def test_sequence_nll_matches_and_counts_the_supervised_tokens(batch: Batch) -> None:
    nll, counts = lean.sequence_nll(batch.logits, batch.labels)
    want, want_counts = naive.sequence_nll(batch.logits.double(), batch.labels)
    assert nll.dtype == torch.float32 and nll.shape == counts.shape == (batch.labels.size(0),)
    assert torch.isfinite(nll).all() and bool((nll >= 0).all())
    assert torch.equal(counts, want_counts) and torch.equal(counts, (batch.labels[:, 1:] != IGNORE).sum(1))
    tol = 1e-5 * want.abs() + 64 * EPS32 * (1 + batch.scale) * batch.labels.size(1)
    assert bool(((nll.double() - want).abs() <= tol).all()), (nll, want)


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@SETTINGS
@given(
    data=st.lists(st.tuples(finite, finite, st.integers(0, 50)), min_size=1, max_size=6),
    beta=st.floats(1e-3, 100.0),
    delta=st.floats(0.0, 10.0),
)
def test_npo_and_simnpo_from_sequence_nlls_are_finite(data: list, beta: float, delta: float) -> None:
    """Any per-sequence NLLs (±1e6) and counts, rows with no token among them: finite values and gradients."""
    nll = torch.tensor([abs(a) for a, _, _ in data], requires_grad=True)
    ref_nll = torch.tensor([abs(b) for _, b, _ in data])
    counts = torch.tensor([c for _, _, c in data])
    empty = counts == 0
    for value in (
        lean.npo_loss_from_nll(nll, ref_nll, counts, beta),
        lean.simnpo_loss_from_nll(nll, counts, beta, delta),
    ):
        (grad,) = torch.autograd.grad(value, nll)
        assert value.shape == () and value.dtype == torch.float32 and math.isfinite(float(value.detach()))
        assert torch.isfinite(grad).all() and not bool(grad[empty].any())
        if bool(empty.all()):
            assert float(value.detach()) == 0.0


@SETTINGS
@given(batch=batches(min_vocab=2))
def test_unilogit_target_is_a_distribution_with_the_label_at_one_over_v(batch: Batch) -> None:
    z, y = naive.supervised_positions(batch.logits, batch.labels)
    log_target = lean.unilogit_target_log_probs(z, y)
    assert log_target.dtype == torch.float32 and log_target.shape == z.shape
    assert bool((log_target <= 0).all()) and not torch.isnan(log_target).any()
    probs = log_target.double().exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(y.numel(), dtype=torch.float64), rtol=0, atol=1e-5)
    # Rows are not shifted here, so h̃_k is formed at the rows' own magnitude: 2⁻²⁴·M relative at most.
    label = probs[torch.arange(y.numel()), y]
    torch.testing.assert_close(label * z.size(-1), torch.ones_like(label), rtol=0, atol=1e-5 + 4 * EPS32 * batch.scale)


# --------------------------------------------------------------------------------------------------
# 4. Config parsing: a parsed config or one ConfigError line, never another exception
# --------------------------------------------------------------------------------------------------


def _llamafactory_fields() -> dict[str, Any]:
    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()
    from llamafactory.hparams.parser import _TRAIN_ARGS

    hints: dict[str, Any] = {}
    for cls in _TRAIN_ARGS:
        types_of = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                hints.setdefault(f.name, types_of[f.name])
    return hints


LLAMAFACTORY_FIELDS = _llamafactory_fields()
# Left out: `stage` (any other than unlearn hands the whole run to llamafactory) and `local_rank` (not -1 makes
# transformers initialise torch.distributed, which a CPU test process cannot).
FUZZED_LLAMAFACTORY_KEYS = sorted(set(LLAMAFACTORY_FIELDS) - {"stage", "local_rank"})
UNLEARNING_KEYS = unlearning_keys()
VALID_KEYS = set(LLAMAFACTORY_FIELDS) | set(UNLEARNING_KEYS)
OUR_VALUES = {
    "unlearn_method": list(METHODS),
    "retain_loss": list(RETAIN_LOSSES),
    **{hp.name: list(hp.choices) for hp in all_hyperparameters() if hp.choices},
    "retain_dataset": ["example_retain", "example_forget,example_retain", "", " , "],
}


def _typed_value(hint: Any) -> st.SearchStrategy:
    """Values of a field's own type, so that llamafactory's checks past the type check run too."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_typed_value(m) for m in typing.get_args(hint)])
    if origin is Literal:
        return st.sampled_from(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from([m.value for m in hint])
    if hint is bool:
        return st.booleans() | st.sampled_from(["true", "false", "yes"])
    if hint is int:
        return st.integers(-2, 2**40) | st.sampled_from(["8", "1e3", 3.0])
    if hint is float:
        return st.floats(-10, 10) | st.sampled_from(["1e-5", "0.5", 2])
    if hint is type(None):
        return st.none()
    return st.text(max_size=8)


ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "none", "auto", "true", "1e-3", "a\nb", "-1", "nan", "inf", "1e400", "steps"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)


def _misspelled(key: str) -> st.SearchStrategy:
    """A one-character edit of ``key``: a letter dropped, doubled, swapped with the next, or replaced."""

    def edit(args: tuple[int, str, str]) -> str:
        i, kind, letter = args
        i %= len(key)
        if kind == "drop":
            return key[:i] + key[i + 1 :]
        if kind == "double":
            return key[:i] + key[i] + key[i:]
        if kind == "swap" and i + 1 < len(key):
            return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
        return key[:i] + letter + key[i + 1 :]

    kinds = st.sampled_from(["drop", "double", "swap", "replace"])
    return st.tuples(st.integers(0, 99), kinds, st.sampled_from("abcdefghijklmnopqrstuvwxyz_")).map(edit)


@st.composite
def valid_entries(draw) -> tuple[str, Any]:
    """A valid key, ours or llamafactory's, mostly with a value of its type, sometimes with any value."""
    if draw(st.booleans()):
        key = draw(st.sampled_from(UNLEARNING_KEYS))
        typed = st.sampled_from(OUR_VALUES[key]) if key in OUR_VALUES else st.floats(0, 20) | st.floats(-1, 1)
    else:
        key = draw(st.sampled_from(FUZZED_LLAMAFACTORY_KEYS))
        typed = _typed_value(LLAMAFACTORY_FIELDS[key])
    return key, draw(st.one_of(typed, typed, typed, typed, ANY_VALUE))


@st.composite
def unknown_entries(draw) -> tuple[Any, Any]:
    """A near miss of a valid key, a random string, or a key that is not a string (YAML allows ``1:``)."""
    kind = draw(st.sampled_from(["misspelled", "random", "not a string"]))
    if kind == "misspelled":
        key = draw(st.sampled_from(sorted(UNLEARNING_KEYS + ("learning_rate", "dataset", "output_dir", "cutoff_len"))))
        key = draw(_misspelled(key))
    elif kind == "random":
        key = draw(st.text(max_size=12))
    else:
        key = draw(st.integers() | st.booleans() | st.floats(allow_nan=False) | st.none())
    return key, draw(ANY_VALUE)


def config_entries() -> st.SearchStrategy:
    """Up to five ``key: value`` entries, a third of the time with one unknown key among them."""
    return st.tuples(
        st.lists(valid_entries(), max_size=5),
        st.one_of(st.just([]), st.just([]), st.lists(unknown_entries(), min_size=1, max_size=1)),
        st.randoms(use_true_random=False),
    ).map(lambda t: t[2].sample(t[0] + t[1], len(t[0] + t[1])))


def _base_unlearn_config(tmp: Path) -> dict[str, Any]:
    """A config ``parse_unlearn_config`` accepts: the example data, a hub-style model id (never loaded)."""
    return {
        "stage": "unlearn",
        "model_name_or_path": "org/model",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "example_forget",
        "retain_dataset": "example_retain",
        "dataset_dir": str(ROOT / "data"),
        "template": "chatml",
        "output_dir": str(tmp / "out"),
        "report_to": "none",
        "use_cpu": True,
    }


def _is_one_line(message: str) -> bool:
    return bool(message.strip()) and not any(c in message for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder for the fuzzed configs, whose relative paths (output_dir: abc) land here."""
    return tmp_path_factory.mktemp("fuzzed-configs")


def _parse_as_train(config: dict[str, Any]) -> tuple[Any, ...]:
    """What ``unilogit train`` runs on a config before it loads anything (launch.train less torchrun and the run)."""
    check_keys(config, UNLEARNING_KEYS)
    return parse_unlearn_config(resolve_config(config))


@settings(SETTINGS, max_examples=200)
@given(entries=config_entries(), dropped=st.sets(st.sampled_from(["dataset", "do_train"])))
def test_random_config_dicts_parse_or_give_one_config_error_line(
    entries: list[tuple[Any, Any]], dropped: set[str], sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sandbox)
    config = _base_unlearn_config(sandbox)
    for key in dropped:
        config.pop(key)
    config.update(entries)
    unknown = [key for key in config if key not in VALID_KEYS]
    try:
        parsed = _parse_as_train(config)
    except ConfigError as err:
        message = str(err)
        assert _is_one_line(message), repr(message)
        event("unknown key" if unknown else "ConfigError")
        if unknown:  # the first unknown key is named, with a valid key as the suggestion or none
            match = re.fullmatch(r"unknown config key (.+); (did you mean '(\w+)'\?|remove it \(.*\))", message)
            assert match and match.group(1) == show(unknown[0]), message
            assert match.group(3) is None or match.group(3) in VALID_KEYS
        return
    assert not unknown
    event("parsed")
    unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args = parsed
    assert unlearning_args.unlearn_method in METHODS and data_args.dataset
    assert unlearning_args.retain_loss in RETAIN_LOSSES
    assert unlearning_args.retain_loss == "none" or unlearning_args.retain_datasets
    for key in ("retain_weight", "npo_beta", "simnpo_beta", "simnpo_delta", "undial_gamma"):
        assert math.isfinite(getattr(unlearning_args, key)) and getattr(unlearning_args, key) >= 0


@settings(SETTINGS, max_examples=100)
@given(key=st.sampled_from(sorted(UNLEARNING_KEYS)), data=st.data())
def test_a_misspelled_key_is_named_with_its_nearest_valid_key(key: str, data: st.DataObject, sandbox: Path) -> None:
    typo = data.draw(_misspelled(key).filter(lambda k: k not in VALID_KEYS))
    with pytest.raises(ConfigError) as err:
        _parse_as_train({**_base_unlearn_config(sandbox), typo: 1})
    match = re.fullmatch(r"unknown config key '(\w*)'; did you mean '(\w+)'\?", str(err.value))
    assert match and match.group(1) == typo, str(err.value)
    assert match.group(2) in VALID_KEYS


YAML_TEXT = st.text(alphabet=st.sampled_from(list("ab_:-[]{}#&*!|>'\"%@`, \n\t\\=.019eE+\x00\x85\ufeff€")), max_size=40)


@st.composite
def config_files(draw) -> str:
    """A config file's text: random YAML-ish characters, or a YAML dump of random entries (as a mapping,
    or as a list or a scalar, which are not configs)."""
    kind = draw(st.sampled_from(["noise", "mapping", "mapping", "not a mapping"]))
    if kind == "noise":
        return draw(YAML_TEXT)
    entries = draw(config_entries())
    as_yaml = [(k, v) for k, v in entries if not (isinstance(k, float) and math.isnan(k))]
    if kind == "mapping":
        return yaml.safe_dump({**_base_unlearn_config(Path("sandbox")), **dict(as_yaml)})
    return yaml.safe_dump(draw(st.sampled_from([[1, 2], "text", 3, None, [{"a": 1}]])))


OVERRIDES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(sorted(UNLEARNING_KEYS)) | st.text(max_size=6), YAML_TEXT).map("=".join),
        st.text(max_size=10),
    ),
    max_size=3,
)


@settings(SETTINGS, max_examples=200)
@given(text=config_files(), suffix=st.sampled_from([".yaml", ".yml", ".json"]), overrides=OVERRIDES)
def test_random_config_files_and_overrides_parse_or_give_one_config_error_line(
    text: str, suffix: str, overrides: list[str], sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``unilogit train FILE key=value ...`` on random files and overrides, up to where training would start."""
    monkeypatch.chdir(sandbox)
    path = sandbox / f"config{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config([str(path), *overrides])
        assert isinstance(config, dict)
        if config.get("stage") == "unlearn":
            _parse_as_train(config)
            event("parsed")
        else:
            event("loaded, not an unlearn config")
    except ConfigError as err:
        assert _is_one_line(str(err)), repr(str(err))
        event("ConfigError")


def test_config_error_lines_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Cases the fuzzing found, as a user meets them: exit code 2 and one line, no traceback."""
    cases = {
        "scalar.yaml": ("7\n", "the config must be a mapping of key: value"),
        "list.yaml": ("- a\n- b\n", "the config must be a mapping of key: value"),
        "int-key.yaml": (yaml.safe_dump({**_base_unlearn_config(tmp_path), 1: "a"}), "unknown config key 1; remove it"),
        "type.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "logging_steps": "often"}),
            "logging_steps: 'often' is not valid; use a number",
        ),
        "retain.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "retain_dataset": ["a", "b"]}),
            "retain_dataset: ['a', 'b'] is not valid; use dataset names from dataset_info.json, comma-separated",
        ),
        "package.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "use_unsloth": True}),
            "a package this config needs is not installed: unsloth; install it, or turn off the option that needs it",
        ),
        "file.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "fsdp_config": "no-such.json"}),
            "[Errno 2] No such file or directory: 'no-such.json'; check the file paths in the config",
        ),
        "bool.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "retain_weight": True}),
            "retain_weight: True is not a number; use e.g. retain_weight=0.5",
        ),
        "internal.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "device_map": "auto"}),
            "unknown config key 'device_map'; ",
        ),
        "big.yaml": (
            yaml.safe_dump({**_base_unlearn_config(tmp_path), "retain_weight": 10**400}),
            "retain_weight: 100000000000000000...0000000000000000000 is out of range; use a finite number >= 0",
        ),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        code = cli.main(["train", str(tmp_path / name)])
        stderr = capsys.readouterr().err
        assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
        lines = [line for line in stderr.splitlines() if line.startswith("unilogit: error:")]
        assert len(lines) == 1 and expected in lines[0], (name, stderr[-2000:])
        assert not (tmp_path / "out").exists()
    code = cli.main(["train", str(tmp_path / "int-key.yaml"), "[[#0,9"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("unilogit: error: bad override '[[#0,9': write key=value"), line


def test_a_retain_dataset_of_only_commas_is_no_retain_set() -> None:
    """Found by the config fuzzing: `retain_dataset: ' , '` named no dataset and yet passed as a retain set."""
    with pytest.raises(ConfigError, match="^retain_loss: kl needs a retain set"):
        UnlearningArguments(unlearn_method="unilogit", retain_dataset=" , ", retain_loss="kl")
