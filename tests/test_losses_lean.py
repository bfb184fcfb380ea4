"""The chunked losses in ``unilogit.losses`` against the straightforward ones in ``unilogit.losses_reference``.

Values and gradients of the lean losses on fp32 logits must agree to 1e-5 relative with the
straightforward formulas evaluated in float64 (in fp32 those are themselves off by more than that
where log p − log p̃ cancels), across many chunks (the chunk size is shrunk to a few rows). On bf16
logits both compute in fp32 and must agree. The lean losses compute the gradient in the forward pass
and must keep nothing vocabulary-sized for the backward pass but that gradient, which the backward
pass hands over without another ``[B, T, V]`` allocation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from unilogit import losses as lean
from unilogit import losses_reference as naive

IGNORE = -100
VOCAB = 1000

# name -> (loss(module, z, ref, target, y)); each is evaluated with both modules.
LOSSES: dict[str, Callable] = {
    "nll": lambda m, z, r, h, y: m.nll_loss(z, y),
    "ga": lambda m, z, r, h, y: m.ga_loss(z, y),
    "sequence_nll": lambda m, z, r, h, y: (m.sequence_nll(z, y)[0] * torch.arange(1.0, y.size(0) + 1)).sum(),
    "npo": lambda m, z, r, h, y: m.npo_loss(z, r, y, beta=0.1),
    "simnpo": lambda m, z, r, h, y: m.simnpo_loss(z, y, beta=4.5, delta=0.5),
    "undial": lambda m, z, r, h, y: m.undial_loss(z, r, y, gamma=10.0),
    "unilogit_reverse": lambda m, z, r, h, y: m.unilogit_forget_loss(z, y),
    "unilogit_forward": lambda m, z, r, h, y: m.unilogit_forget_loss(z, y, divergence="forward"),
    "unilogit_reverse_initial": lambda m, z, r, h, y: m.unilogit_forget_loss(z, y, target_logits=h),
    "unilogit_forward_initial": lambda m, z, r, h, y: m.unilogit_forget_loss(z, y, h, "forward"),
    "kl_retain": lambda m, z, r, h, y: m.kl_retain_loss(z, r, y),
}
WITH_ROWS = ("undial", "unilogit_reverse_initial", "unilogit_forward_initial", "kl_retain")


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three rows a chunk, so that a batch spans many chunks and ends on a partial one."""
    monkeypatch.setattr(lean, "CHUNK_ELEMENTS", 3 * VOCAB)


def _case(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    bsz, seq = 3, 17
    z = torch.randn(bsz, seq, VOCAB, generator=g) * 3
    r = z + torch.randn(bsz, seq, VOCAB, generator=g)
    h = torch.randn(bsz, seq, VOCAB, generator=g) * 3
    y = torch.randint(0, VOCAB, (bsz, seq), generator=g)
    y[torch.rand(bsz, seq, generator=g) < 0.3] = IGNORE
    y[0, :5] = IGNORE  # a prompt
    y[2, 10:] = IGNORE  # padding
    return z.to(dtype), r.to(dtype), h.to(dtype), y


def _value_and_grad(module, name: str, z, r, h, y) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_(True)
    out = LOSSES[name](module, z, r, h, y)
    out.backward()
    return out.detach(), z.grad


def _assert_match(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    (value, grad), (want_value, want_grad) = got, want
    assert abs(float(value) - float(want_value)) <= 1e-5 * abs(float(want_value)) + 1e-7
    scale = float(want_grad.float().abs().max())
    assert scale > 0
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_lean_matches_straightforward(name: str, seed: int) -> None:
    z, r, h, y = _case(seed)
    exact = _value_and_grad(naive, name, z.double(), r.double(), h.double(), y)
    _assert_match(_value_and_grad(lean, name, z, r, h, y), exact)


@pytest.mark.parametrize("name", list(LOSSES))
def test_lean_matches_straightforward_on_bf16_logits(name: str) -> None:
    z, r, h, y = _case(2, torch.bfloat16)
    got, want = _value_and_grad(lean, name, z, r, h, y), _value_and_grad(naive, name, z, r, h, y)
    assert got[1].dtype == torch.bfloat16
    # Both round the same fp32 gradient to bf16, so compare the values tightly and the gradients to bf16's step.
    assert abs(float(got[0]) - float(want[0])) <= 1e-5 * abs(float(want[0])) + 1e-7
    torch.testing.assert_close(got[1].float(), want[1].float(), rtol=1e-2, atol=1e-2 * float(want[1].abs().max()))


@pytest.mark.parametrize("name", WITH_ROWS)
def test_reference_rows_give_the_same_loss(name: str) -> None:
    z, r, h, y = _case(3)
    full = _value_and_grad(lean, name, z, r, h, y)
    rows = _value_and_grad(lean, name, z, lean.supervised_rows(r, y), lean.supervised_rows(h, y), y)
    torch.testing.assert_close(rows[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(rows[1], full[1], rtol=0, atol=0)


def test_reference_rows_of_another_batch_are_refused() -> None:
    z, r, _, y = _case(4)
    wrong = lean.supervised_rows(r, y)[:-1]
    with pytest.raises(ValueError, match="reference rows"):
        lean.kl_retain_loss(z, wrong, y)


def _saved_for_backward(module, name: str, z, r, h, y) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        LOSSES[name](module, z, r, h, y)
    return saved


@pytest.mark.parametrize("name", list(LOSSES))
def test_lean_keeps_no_vocabulary_sized_copy_for_backward(name: str) -> None:
    z, r, h, y = _case(5)
    z.requires_grad_(True)
    n = int((y[:, 1:] != IGNORE).sum())
    assert 4 * n < VOCAB  # so a few statistics per position stay below one vocabulary row
    big = [t for t in _saved_for_backward(lean, name, z, r, h, y) if t.numel() >= VOCAB]
    assert not big, [tuple(t.shape) for t in big]  # not even the logits: the gradient is already computed
    # The straightforward formulas keep fp32 [N, V] copies: the check above would catch them.
    copies = [t for t in _saved_for_backward(naive, name, z, r, h, y) if t.numel() >= n * VOCAB]
    assert any(t.data_ptr() != z.data_ptr() for t in copies)


def _row_losses(out: torch.Tensor) -> list:
    """The ``_RowLoss`` nodes of ``out``'s graph."""
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_RowLossBackward":
            found.append(node)
        stack.extend(child for child, _ in node.next_functions)
    return found


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_backward_hands_over_the_gradient_computed_in_the_forward_pass(name: str, dtype: torch.dtype) -> None:
    z, r, h, y = _case(6, dtype)
    z.requires_grad_(True)
    out = LOSSES[name](lean, z, r, h, y)
    (node,) = _row_losses(out)  # the reference's NLL for NPO runs without gradient, so it has no node
    buffer = node.buffer
    assert buffer.shape == z.shape and buffer.dtype == dtype
    (grad,) = torch.autograd.grad(out, z)
    assert grad.data_ptr() == buffer.data_ptr()  # scaled in place: the backward pass allocated no [B, T, V]
    assert node.buffer is None  # handed over, not kept alive by the graph
    masked = torch.ones(y.shape, dtype=torch.bool)
    masked[:, :-1] = y[:, 1:] == IGNORE
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))


def test_a_second_backward_through_the_same_loss_is_refused() -> None:
    z, _, _, y = _case(7)
    z.requires_grad_(True)
    out = lean.nll_loss(z, y)
    torch.autograd.grad(out, z, retain_graph=True)
    with pytest.raises(RuntimeError, match="backward twice"):
        torch.autograd.grad(out, z)


@pytest.mark.parametrize("name", ["nll", "undial", "unilogit_reverse", "unilogit_forward_initial"])
def test_no_gradient_buffer_without_gradients(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    z, r, h, y = _case(8)
    want = LOSSES[name](lean, z.clone().requires_grad_(True), r, h, y).detach()
    sizes: list[int] = []
    zeros_like = torch.zeros_like

    def counting(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        sizes.append(t.numel())
        return zeros_like(t, *args, **kwargs)

    monkeypatch.setattr(torch, "zeros_like", counting)
    with torch.no_grad():
        under_no_grad = LOSSES[name](lean, z.clone().requires_grad_(True), r, h, y)
    without_grad = LOSSES[name](lean, z, r, h, y)
    assert max(sizes, default=0) < VOCAB, sizes
    assert under_no_grad.grad_fn is None and without_grad.grad_fn is None
    assert torch.equal(under_no_grad, want) and torch.equal(without_grad, want)
