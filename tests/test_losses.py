"""Tests of ``unilogit.losses`` against independent float64 references (docs/METHODS.md).

Every reference below is written here with explicit loops over (row, position) and plain float64
tensor math; none of them calls a helper from ``unilogit.losses``. Gradients are checked against
autograd through those float64 references.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hypothesis_settings
from unilogit import losses as L

IGNORE = -100

SETTINGS = hypothesis_settings(20)
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------------------------------


def _lsm(z: torch.Tensor) -> torch.Tensor:
    """log-softmax of a 1-D float64 vector, written out."""
    m = z.max().detach()
    return z - m - torch.log(torch.exp(z - m).sum())


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """log σ(x) = min(x, 0) − log(1 + e^{−|x|})."""
    return torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-x.abs()))


def _supervised(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    """(b, t, k) for every position t whose logits predict a supervised label k = labels[b, t+1]."""
    out = []
    bsz, seq = labels.shape
    for b in range(bsz):
        for t in range(seq - 1):
            k = int(labels[b, t + 1])
            if k != IGNORE:
                out.append((b, t, k))
    return out


def _mean(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(terms).mean()


def ref_nll(z, r, h, y):
    return _mean([-_lsm(z[b, t])[k] for b, t, k in _supervised(y)])


def ref_ga(z, r, h, y):
    return -ref_nll(z, r, h, y)


def _seq_nll(z: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    bsz = y.shape[0]
    sums: list[torch.Tensor] = [z.new_zeros(()) for _ in range(bsz)]
    counts = [0] * bsz
    for b, t, k in _supervised(y):
        sums[b] = sums[b] - _lsm(z[b, t])[k]
        counts[b] += 1
    return sums, counts


def ref_npo(z, r, h, y, beta):
    nll, counts = _seq_nll(z, y)
    ref_nll_, _ = _seq_nll(r.detach(), y)
    vals = [_logsigmoid(beta * (nll[b] - ref_nll_[b])) for b in range(len(counts)) if counts[b] > 0]
    return -(2.0 / beta) * _mean(vals)


def ref_simnpo(z, r, h, y, beta, delta=0.0):
    nll, counts = _seq_nll(z, y)
    vals = [_logsigmoid(beta * nll[b] / counts[b] - delta) for b in range(len(counts)) if counts[b] > 0]
    return -(2.0 / beta) * _mean(vals)


def ref_undial(z, r, h, y, gamma):
    terms = []
    for b, t, k in _supervised(y):
        # Shift-invariant form: add γ to every logit except the label's (same as z_ref − γ·onehot(y)).
        teacher = r[b, t].detach().clone() + gamma
        teacher[k] = r[b, t, k].detach()
        q = torch.exp(_lsm(teacher))
        terms.append(-(q * _lsm(z[b, t])).sum())
    return _mean(terms)


def ref_kl_retain(z, r, h, y):
    terms = []
    for b, t, _ in _supervised(y):
        lp_ref = _lsm(r[b, t].detach())
        terms.append((torch.exp(lp_ref) * (lp_ref - _lsm(z[b, t]))).sum())
    return _mean(terms)


def ref_unilogit_target(h: torch.Tensor, k: int) -> torch.Tensor:
    """log p̃ from the closed form p̃_k = 1/V, p̃_i = (V−1)/V · e^{h_i} / Σ_{j≠k} e^{h_j} (i ≠ k)."""
    h = h.detach().double()
    vocab = h.numel()
    others = [i for i in range(vocab) if i != k]
    out = torch.empty(vocab, dtype=torch.float64)
    out[others] = math.log((vocab - 1) / vocab) + _lsm(h[others])
    out[k] = -math.log(vocab)
    return out


def ref_unilogit(z, r, h, y, divergence="reverse", use_target=False):
    terms = []
    for b, t, k in _supervised(y):
        src = h[b, t] if use_target else z[b, t]
        lpt = ref_unilogit_target(src, k)
        lp = _lsm(z[b, t])
        if divergence == "reverse":
            terms.append((torch.exp(lp) * (lp - lpt)).sum())
        else:
            terms.append((torch.exp(lpt) * (lpt - lp)).sum())
    return _mean(terms)


def bernoulli_kl(p: float | torch.Tensor, vocab: int):
    """KL(Bern(p) ‖ Bern(1/V)) = p·log(V·p) + (1−p)·log((1−p)/(1−1/V)), in float64."""
    p = torch.as_tensor(p, dtype=torch.float64)
    q = 1.0 - p
    first = torch.where(p > 0, p * torch.log(vocab * p), torch.zeros_like(p))
    second = torch.where(q > 0, q * (torch.log(q) - math.log(1.0 - 1.0 / vocab)), torch.zeros_like(q))
    return first + second


# --------------------------------------------------------------------------------------------------
# Catalogue of public losses (implementation, reference)
# --------------------------------------------------------------------------------------------------

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, tuple[Fn, Fn]] = {
    "nll": (lambda z, r, h, y: L.nll_loss(z, y), ref_nll),
    "ga": (lambda z, r, h, y: L.ga_loss(z, y), ref_ga),
    "npo_b0.1": (lambda z, r, h, y: L.npo_loss(z, r, y, beta=0.1), lambda z, r, h, y: ref_npo(z, r, h, y, 0.1)),
    "npo_b2": (lambda z, r, h, y: L.npo_loss(z, r, y, 2.0), lambda z, r, h, y: ref_npo(z, r, h, y, 2.0)),
    "simnpo_b4.5": (lambda z, r, h, y: L.simnpo_loss(z, y, beta=4.5), lambda z, r, h, y: ref_simnpo(z, r, h, y, 4.5)),
    "simnpo_b2_d0.7": (
        lambda z, r, h, y: L.simnpo_loss(z, y, beta=2.0, delta=0.7),
        lambda z, r, h, y: ref_simnpo(z, r, h, y, 2.0, 0.7),
    ),
    "undial_g10": (
        lambda z, r, h, y: L.undial_loss(z, r, y, gamma=10.0),
        lambda z, r, h, y: ref_undial(z, r, h, y, 10.0),
    ),
    "undial_g3": (lambda z, r, h, y: L.undial_loss(z, r, y, 3.0), lambda z, r, h, y: ref_undial(z, r, h, y, 3.0)),
    "unilogit_reverse": (lambda z, r, h, y: L.unilogit_forget_loss(z, y), ref_unilogit),
    "unilogit_forward": (
        lambda z, r, h, y: L.unilogit_forget_loss(z, y, divergence="forward"),
        lambda z, r, h, y: ref_unilogit(z, r, h, y, "forward"),
    ),
    "unilogit_reverse_initial": (
        lambda z, r, h, y: L.unilogit_forget_loss(z, y, target_logits=h),
        lambda z, r, h, y: ref_unilogit(z, r, h, y, "reverse", use_target=True),
    ),
    "unilogit_forward_initial": (
        lambda z, r, h, y: L.unilogit_forget_loss(z, y, target_logits=h, divergence="forward"),
        lambda z, r, h, y: ref_unilogit(z, r, h, y, "forward", use_target=True),
    ),
    "kl_retain": (lambda z, r, h, y: L.kl_retain_loss(z, r, y), ref_kl_retain),
}
NAMES = list(LOSSES)


@dataclass
class Case:
    logits: torch.Tensor
    ref: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor


def make_case(bsz, seq, vocab, seed, scale=2.0, mask_p=0.3, ensure_supervised=True) -> Case:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(bsz, seq, vocab, generator=g) * scale
    ref = logits + torch.randn(bsz, seq, vocab, generator=g) * scale * 0.5
    target = torch.randn(bsz, seq, vocab, generator=g) * scale
    labels = torch.randint(0, vocab, (bsz, seq), generator=g)
    labels[torch.rand(bsz, seq, generator=g) < mask_p] = IGNORE
    if ensure_supervised and not bool((labels[:, 1:] != IGNORE).any()):
        labels[0, seq - 1] = vocab - 1
    return Case(logits, ref, target, labels)


@st.composite
def cases(draw, min_vocab=2, max_vocab=12, max_scale=10.0) -> Case:
    bsz = draw(st.integers(1, 3))
    seq = draw(st.integers(2, 6))
    vocab = draw(st.integers(min_vocab, max_vocab))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([s for s in (0.1, 1.0, 3.0, 10.0) if s <= max_scale]))
    mask_p = draw(st.sampled_from([0.0, 0.3, 0.7]))
    return make_case(bsz, seq, vocab, seed, scale, mask_p)


def run_impl(name: str, z, r, h, y, grad_inputs: bool = False):
    """Value and gradient of the implementation; ref/target logits require grad to catch leaks."""
    z = z.detach().clone().requires_grad_(True)
    r = r.detach().clone().requires_grad_(grad_inputs)
    h = h.detach().clone().requires_grad_(grad_inputs)
    out = LOSSES[name][0](z, r, h, y)
    out.backward()
    return out.detach(), z.grad, r.grad, h.grad


def run_ref(name: str, z, r, h, y):
    z64 = z.detach().double().requires_grad_(True)
    out = LOSSES[name][1](z64, r.detach().double(), h.detach().double(), y)
    out.backward()
    return out.detach(), z64.grad


# --------------------------------------------------------------------------------------------------
# 1. Unilogit target distribution
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(n=st.integers(1, 6), vocab=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 20.0))
def test_unilogit_target_is_uniform_at_label_and_keeps_ratios(n, vocab, seed, scale):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, vocab, generator=g) * scale
    y = torch.randint(0, vocab, (n,), generator=g)
    log_pt = L.unilogit_target_log_probs(h, y).double()
    assert log_pt.shape == (n, vocab)
    h64 = h.double()
    for i in range(n):
        k = int(y[i])
        pt = torch.exp(log_pt[i])
        assert math.isclose(float(pt.sum()), 1.0, rel_tol=0, abs_tol=1e-5)
        assert math.isclose(float(pt[k]), 1.0 / vocab, rel_tol=1e-5, abs_tol=0)
        # Ratios among non-label tokens equal the model's softmax ratios: p̃(v)/p̃(w) == p(v)/p(w).
        p = torch.exp(_lsm(h64[i]))
        others = [v for v in range(vocab) if v != k]
        for v in others:
            for w in others:
                got = float(log_pt[i, v] - log_pt[i, w])
                want = float(torch.log(p[v]) - torch.log(p[w]))
                assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-4), (v, w, got, want)
        # And the whole vector matches the closed form.
        torch.testing.assert_close(log_pt[i], ref_unilogit_target(h64[i], k), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("label_logit", [30.0, 60.0, 1e4])
def test_unilogit_target_stable_when_label_probability_is_one(label_logit):
    """p_k → 1 in fp32: LSE + log(1 − p_k) would give −inf; the stable form must still give 1/V."""
    vocab = 9
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, vocab, generator=g)
    y = torch.tensor([0, 4, 8])
    h[torch.arange(3), y] = label_logit
    log_pt = L.unilogit_target_log_probs(h, y).double()
    assert torch.isfinite(log_pt).all()
    for i in range(3):
        k = int(y[i])
        torch.testing.assert_close(log_pt[i], ref_unilogit_target(h[i].double(), k), rtol=1e-5, atol=1e-5)
        assert math.isclose(float(torch.exp(log_pt[i, k])), 1.0 / vocab, rel_tol=1e-5)
    # The public loss agrees with the Bernoulli closed form (≈ log V) in that regime too.
    logits = h.unsqueeze(0).unsqueeze(2).expand(1, 3, 2, vocab).reshape(1, 6, vocab)
    labels = torch.full((1, 6), IGNORE)
    labels[0, 1::2] = y
    out = L.unilogit_forget_loss(logits, labels)
    p_k = torch.exp(torch.stack([_lsm(h[i].double())[int(y[i])] for i in range(3)]))
    want = bernoulli_kl(p_k, vocab).mean()
    assert torch.isfinite(out)
    assert math.isclose(float(out), float(want), rel_tol=1e-4, abs_tol=1e-5)


def _recover_target_from_forward_grad(logits, labels, target_logits):
    """Forward KL(p̃ ‖ p_θ) with p̃ detached has ∂L/∂z_n = (p_θ,n − p̃_n)/N, so p̃_n = p_θ,n − N·grad_n."""
    z = logits.clone().requires_grad_(True)
    L.unilogit_forget_loss(z, labels, target_logits=target_logits, divergence="forward").backward()
    sup = _supervised(labels)
    n = len(sup)
    out = []
    for b, t, k in sup:
        p = torch.exp(_lsm(logits[b, t].double()))
        out.append((k, p - n * z.grad[b, t].double()))
    return out


@SETTINGS
@given(case=cases(min_vocab=3, max_scale=3.0), use_target=st.booleans())
def test_unilogit_target_inside_loss_comes_from_the_right_source(case, use_target):
    """The target used by the loss (read back from the gradient) is 1/V at the label, sums to 1, and keeps
    the ratios of softmax(target_logits) when given, else of softmax(logits)."""
    target_logits = case.target if use_target else None
    source = case.target if use_target else case.logits
    vocab = case.logits.shape[-1]
    for (b, t, k), (k2, pt) in zip(
        _supervised(case.labels),
        _recover_target_from_forward_grad(case.logits, case.labels, target_logits),
        strict=True,
    ):
        assert k == k2
        assert math.isclose(float(pt.sum()), 1.0, abs_tol=1e-5)
        assert math.isclose(float(pt[k]), 1.0 / vocab, abs_tol=1e-5)
        p_src = torch.exp(_lsm(source[b, t].double()))
        others = [v for v in range(vocab) if v != k]
        want = p_src[others] / p_src[others].sum() * (vocab - 1) / vocab
        torch.testing.assert_close(pt[others], want, rtol=1e-4, atol=1e-5)


def test_unilogit_initial_target_differs_from_default():
    case = make_case(2, 5, 7, seed=3, scale=2.0, mask_p=0.0)
    default = L.unilogit_forget_loss(case.logits, case.labels)
    initial = L.unilogit_forget_loss(case.logits, case.labels, target_logits=case.target)
    same = L.unilogit_forget_loss(case.logits, case.labels, target_logits=case.logits.clone())
    assert not math.isclose(float(default), float(initial), rel_tol=1e-3)
    torch.testing.assert_close(default, same)


def test_unilogit_rejects_unknown_divergence():
    case = make_case(1, 4, 5, seed=0)
    with pytest.raises(ValueError):
        L.unilogit_forget_loss(case.logits, case.labels, divergence="js")


# --------------------------------------------------------------------------------------------------
# 2. Bernoulli-KL identity for reverse Unilogit with the default target
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(max_vocab=30))
def test_unilogit_reverse_equals_bernoulli_kl(case):
    vocab = case.logits.shape[-1]
    full, closed = [], []
    for b, t, k in _supervised(case.labels):
        z = case.logits[b, t].double()
        lp = _lsm(z)
        lpt = ref_unilogit_target(z, k)
        full.append((torch.exp(lp) * (lp - lpt)).sum())
        closed.append(bernoulli_kl(torch.exp(lp[k]), vocab))
    full_t, closed_t = torch.stack(full), torch.stack(closed)
    # The identity itself, in float64 over the full vocabulary sum.
    torch.testing.assert_close(full_t, closed_t, rtol=1e-9, atol=1e-10)
    out = L.unilogit_forget_loss(case.logits, case.labels)
    assert math.isclose(float(out), float(closed_t.mean()), rel_tol=1e-4, abs_tol=1e-6)
    # Bounded below by 0 (unlike GA), for both divergences.
    assert float(out) >= -1e-6
    assert float(L.unilogit_forget_loss(case.logits, case.labels, divergence="forward")) >= -1e-6


@pytest.mark.parametrize("divergence", ["reverse", "forward"])
def test_unilogit_zero_iff_label_probability_is_one_over_v(divergence):
    vocab = 11
    case = make_case(2, 6, vocab, seed=7, scale=2.0, mask_p=0.2)
    logits = case.logits.clone()
    for b, t, k in _supervised(case.labels):
        others = [v for v in range(vocab) if v != k]
        logits[b, t, k] = float(torch.logsumexp(logits[b, t, others].double(), 0) - math.log(vocab - 1))
    z = logits.clone().requires_grad_(True)
    out = L.unilogit_forget_loss(z, case.labels, divergence=divergence)
    out.backward()
    assert abs(float(out.detach())) < 1e-6
    assert float(z.grad.abs().max()) < 1e-6
    # Move one label's probability away from 1/V: strictly positive.
    b, t, k = _supervised(case.labels)[0]
    logits[b, t, k] += 1.0
    assert float(L.unilogit_forget_loss(logits, case.labels, divergence=divergence)) > 1e-4


# --------------------------------------------------------------------------------------------------
# 3. NPO at θ = θ_o
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.2, 1.0, 4.5])
def test_npo_at_reference_is_two_over_beta_ln2(beta):
    case = make_case(4, 7, 13, seed=11, scale=3.0, mask_p=0.4)
    labels = case.labels.clone()
    labels[2] = IGNORE  # a row with nothing supervised must not enter the mean
    z = case.logits.clone().requires_grad_(True)
    out = L.npo_loss(z, case.logits.clone(), labels, beta)
    out.backward()
    assert math.isclose(float(out.detach()), 2.0 / beta * math.log(2.0), rel_tol=1e-6)
    # At θ = θ_o, ∂L/∂NLL_seq(b) = −(2/β)·β·σ(0)/B' = −1/B' for each of the B' non-empty rows, so
    # grad = −(softmax − onehot)/B': NPO pushes the forget NLL up.
    rows = {b for b, _, _ in _supervised(labels)}
    want = torch.zeros_like(z, dtype=torch.float64)
    for b, t, k in _supervised(labels):
        g = torch.exp(_lsm(case.logits[b, t].double()))
        g[k] -= 1.0
        want[b, t] = -g / len(rows)
    torch.testing.assert_close(z.grad.double(), want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 4. Masked positions and padding change nothing
# --------------------------------------------------------------------------------------------------


def _garbage(shape, seed, nonfinite=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 1e3
    flat = x.view(-1)
    flat[::3] = 1e4
    flat[1::5] = -1e4
    if nonfinite:
        flat[::4] = float("nan")
        flat[1::4] = float("inf")
        flat[2::4] = float("-inf")
    return x


def _check_invariant(name, base: Case, other: Case, real_slice):
    v0, g0, r0, h0 = run_impl(name, base.logits, base.ref, base.target, base.labels, grad_inputs=True)
    v1, g1, r1, h1 = run_impl(name, other.logits, other.ref, other.target, other.labels, grad_inputs=True)
    assert r0 is None and h0 is None and r1 is None and h1 is None
    assert torch.isfinite(v1)
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1[real_slice], g0, rtol=1e-5, atol=1e-8)
    mask = torch.ones(g1.shape, dtype=torch.bool)
    mask[real_slice] = False
    assert torch.equal(g1[mask], torch.zeros_like(g1[mask])), "padding received gradient"


def _pad(case: Case, where: str, n: int, seed: int, nonfinite: bool) -> tuple[Case, tuple]:
    bsz, seq, vocab = case.logits.shape
    if where == "row":
        shape, dim = (n, seq, vocab), 0
        lab = torch.full((n, seq), IGNORE)
    else:
        shape, dim = (bsz, n, vocab), 1
        lab = torch.full((bsz, n), IGNORE)
    pads = [_garbage(shape, seed + i, nonfinite) for i in range(3)]
    if where == "left":
        cat = [torch.cat([p, x], dim) for p, x in zip(pads, (case.logits, case.ref, case.target), strict=True)]
        labels = torch.cat([lab, case.labels], dim)
        sl = (slice(None), slice(n, None))
    else:
        cat = [torch.cat([x, p], dim) for p, x in zip(pads, (case.logits, case.ref, case.target), strict=True)]
        labels = torch.cat([case.labels, lab], dim)
        sl = (slice(0, bsz),) if where == "row" else (slice(None), slice(0, seq))
    return Case(*cat, labels), sl


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["right", "left", "row"])
@settings(SETTINGS, max_examples=8)
@given(case=cases(), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_padding_changes_nothing(name, where, case, n, seed):
    case.labels[:, 0] = IGNORE  # so left padding does not turn the unused first label into a target
    padded, sl = _pad(case, where, n, seed, nonfinite=False)
    _check_invariant(name, case, padded, sl)


@pytest.mark.parametrize("name", NAMES)
@settings(SETTINGS, max_examples=8)
@given(case=cases(), seed=st.integers(0, 1000))
def test_masked_positions_change_nothing(name, case, seed):
    """Logits at positions whose next label is −100 and at the last position, and labels[:, 0], are unused."""
    other = Case(case.logits.clone(), case.ref.clone(), case.target.clone(), case.labels.clone())
    bsz, seq, vocab = case.logits.shape
    unused = torch.zeros(bsz, seq, dtype=torch.bool)
    unused[:, :-1] = case.labels[:, 1:] == IGNORE
    unused[:, -1] = True
    for i, x in enumerate((other.logits, other.ref, other.target)):
        x[unused] = _garbage((int(unused.sum()), vocab), seed + i)
    g = torch.Generator().manual_seed(seed)
    other.labels[:, 0] = torch.randint(0, vocab, (bsz,), generator=g)
    v0, g0, _, _ = run_impl(name, case.logits, case.ref, case.target, case.labels)
    v1, g1, _, _ = run_impl(name, other.logits, other.ref, other.target, other.labels)
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-8)
    assert torch.equal(g1[unused], torch.zeros_like(g1[unused]))


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_garbage_at_padding_is_never_read(name):
    case = make_case(2, 5, 9, seed=5, mask_p=0.3)
    case.labels[:, 0] = IGNORE
    for where in ("right", "left", "row"):
        padded, sl = _pad(case, where, 2, seed=17, nonfinite=True)
        _check_invariant(name, case, padded, sl)


# --------------------------------------------------------------------------------------------------
# 5. −100 is never used as an index
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ignore_index_never_indexes_small_vocab(name):
    """V = 7 < 100: indexing or gathering with −100 would raise (or wrap to V − 100 mod V)."""
    vocab = 7
    case = make_case(3, 6, vocab, seed=2, mask_p=0.5)
    assert bool((case.labels == IGNORE).any())
    out, grad, _, _ = run_impl(name, case.logits, case.ref, case.target, case.labels)
    want, want_grad = run_ref(name, case.logits, case.ref, case.target, case.labels)
    assert math.isclose(float(out), float(want), rel_tol=1e-5, abs_tol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    # Labels that are all −100.
    labels = torch.full_like(case.labels, IGNORE)
    out, grad, _, _ = run_impl(name, case.logits, case.ref, case.target, labels)
    assert torch.isfinite(out) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_ignore_index_column_does_not_matter(name):
    """V = 128: −100 would silently wrap to column 28; its logits at ignored positions must not matter."""
    vocab = 128
    col = IGNORE % vocab
    case = make_case(2, 6, vocab, seed=9, mask_p=0.5)
    ignored = torch.zeros(case.labels.shape, dtype=torch.bool)
    ignored[:, :-1] = case.labels[:, 1:] == IGNORE
    assert bool(ignored.any())
    other = Case(case.logits.clone(), case.ref.clone(), case.target.clone(), case.labels)
    for x, value in ((other.logits, 50.0), (other.ref, -50.0), (other.target, 80.0)):
        x[..., col][ignored] = value
    v0, _, _, _ = run_impl(name, case.logits, case.ref, case.target, case.labels)
    v1, _, _, _ = run_impl(name, other.logits, other.ref, other.target, other.labels)
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
    want, _ = run_ref(name, case.logits, case.ref, case.target, case.labels)
    assert math.isclose(float(v0), float(want), rel_tol=1e-5, abs_tol=1e-6)


# --------------------------------------------------------------------------------------------------
# 6. Extreme logits and fully masked rows / batches
# --------------------------------------------------------------------------------------------------


def _extreme(shape, seed, kind):
    g = torch.Generator().manual_seed(seed)
    if kind == "sign":
        return torch.where(torch.rand(*shape, generator=g) < 0.5, -1e4, 1e4)
    return (torch.rand(*shape, generator=g) * 2 - 1) * 1e4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["sign", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite(name, kind, dtype):
    bsz, seq, vocab = 3, 6, 10
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, vocab, (bsz, seq), generator=g)
    labels[1] = IGNORE  # a fully masked row
    labels[0, 2] = IGNORE
    logits, ref, target = (_extreme((bsz, seq, vocab), s, kind).to(dtype) for s in (1, 2, 3))
    out, grad, _, _ = run_impl(name, logits, ref, target, labels)
    assert out.dtype == torch.float32
    assert torch.isfinite(out), float(out)
    assert torch.isfinite(grad).all()
    want, want_grad = run_ref(name, logits.float(), ref.float(), target.float(), labels)
    assert math.isclose(float(out), float(want), rel_tol=1e-4, abs_tol=1e-2), (float(out), float(want))
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.double(), want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_batch_is_finite_and_zero(name, dtype):
    case = make_case(2, 4, 6, seed=4, ensure_supervised=False)
    labels = torch.full_like(case.labels, IGNORE)
    labels[:, 0] = 3  # the first label is never a target
    logits, ref, target = (x.to(dtype) for x in (case.logits * 1e3, case.ref, case.target))
    out, grad, _, _ = run_impl(name, logits, ref, target, labels)
    assert out.shape == ()
    assert torch.isfinite(out) and torch.isfinite(grad).all()
    assert float(out) == 0.0
    assert float(grad.abs().max()) == 0.0


# --------------------------------------------------------------------------------------------------
# 7. Each public loss against its independent reference; fp32 compute for bf16 inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(case=cases())
def test_loss_matches_reference(name, case):
    out, grad, ref_grad, target_grad = run_impl(name, case.logits, case.ref, case.target, case.labels, True)
    assert out.shape == () and out.dtype == torch.float32
    # The reference / target logits carry no gradient: only `logits` is differentiated.
    assert ref_grad is None and target_grad is None
    want, want_grad = run_ref(name, case.logits, case.ref, case.target, case.labels)
    assert math.isclose(float(out), float(want), rel_tol=1e-4, abs_tol=1e-4), (float(out), float(want))
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(case=cases())
def test_ga_is_minus_nll(case):
    nll = L.nll_loss(case.logits, case.labels)
    ga = L.ga_loss(case.logits, case.labels)
    assert float(ga) == -float(nll)
    n = len(_supervised(case.labels))
    total = sum(-float(_lsm(case.logits[b, t].double())[k]) for b, t, k in _supervised(case.labels))
    assert math.isclose(float(nll), total / n, rel_tol=1e-5, abs_tol=1e-6)


@SETTINGS
@given(case=cases(min_vocab=3, max_scale=3.0), gamma=st.sampled_from([0.0, 3.0, 10.0, 30.0]))
def test_undial_gradient_is_student_minus_teacher(case, gamma):
    """Soft CE with a detached teacher: ∂L/∂z_n = (softmax(z_n) − softmax(z_ref,n − γ·e_y))/N."""
    z = case.logits.clone().requires_grad_(True)
    r = case.ref.clone().requires_grad_(True)
    L.undial_loss(z, r, case.labels, gamma).backward()
    assert r.grad is None
    sup = _supervised(case.labels)
    want = torch.zeros(z.shape, dtype=torch.float64)
    for b, t, k in sup:
        onehot = torch.zeros(z.shape[-1], dtype=torch.float64)
        onehot[k] = gamma
        teacher = torch.exp(_lsm(case.ref[b, t].double() - onehot))
        want[b, t] = (torch.exp(_lsm(case.logits[b, t].double())) - teacher) / len(sup)
    torch.testing.assert_close(z.grad.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_are_computed_in_fp32(name):
    case = make_case(3, 7, 50, seed=21, scale=4.0, mask_p=0.3)
    z16, r16, h16 = (x.to(torch.bfloat16) for x in (case.logits, case.ref, case.target))
    z = z16.clone().requires_grad_(True)
    out = LOSSES[name][0](z, r16, h16, case.labels)
    assert out.dtype == torch.float32
    out.backward()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad).all()
    fp32 = LOSSES[name][0](z16.float(), r16.float(), h16.float(), case.labels)
    torch.testing.assert_close(out, fp32, rtol=1e-6, atol=1e-6)
    want, _ = run_ref(name, z16.float(), r16.float(), h16.float(), case.labels)
    assert math.isclose(float(out.detach()), float(want), rel_tol=1e-5, abs_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# 8. Signatures match docs/METHODS.md
# --------------------------------------------------------------------------------------------------

EMPTY = inspect.Parameter.empty
SIGNATURES = {
    "nll_loss": [("logits", EMPTY), ("labels", EMPTY)],
    "ga_loss": [("logits", EMPTY), ("labels", EMPTY)],
    "npo_loss": [("logits", EMPTY), ("ref_logits", EMPTY), ("labels", EMPTY), ("beta", EMPTY)],
    "simnpo_loss": [("logits", EMPTY), ("labels", EMPTY), ("beta", EMPTY), ("delta", 0.0)],
    "undial_loss": [("logits", EMPTY), ("ref_logits", EMPTY), ("labels", EMPTY), ("gamma", EMPTY)],
    "unilogit_forget_loss": [("logits", EMPTY), ("labels", EMPTY), ("target_logits", None), ("divergence", "reverse")],
    "kl_retain_loss": [("logits", EMPTY), ("ref_logits", EMPTY), ("labels", EMPTY)],
}


@pytest.mark.parametrize("fn_name", list(SIGNATURES))
def test_signature_matches_methods_table(fn_name):
    params = list(inspect.signature(getattr(L, fn_name)).parameters.values())
    assert [(p.name, p.default) for p in params] == SIGNATURES[fn_name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    for p in params:
        if p.default is not EMPTY:
            assert type(p.default) is type(dict(SIGNATURES[fn_name])[p.name])
