"""KL divergence between two models' next-token distributions on texts (MUSE's KL to the retrained model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unilogit.evaluation.common import map_right_padded, model_device
from unilogit.losses import kl_retain_loss


@torch.no_grad()
def mean_token_kl(
    model: torch.nn.Module,
    reference_model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "KL",
) -> float:
    """Mean over all next-token positions of KL(p_reference ‖ p_model), in fp32.

    KL(p_ref ‖ p_θ) = Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)) at each position t = 0..n−2 of every text
    (the positions that predict a token of the text), averaged over all positions of all texts. With
    ``reference_model`` the retrained model this is KL(p_retrain ‖ p_unlearned): the gold model's
    distribution is the "true" one and the unlearned model is scored on how well it covers it (the
    distillation direction). Both models must share ``tokenizer``'s vocabulary.

    Per text this is the training's forward-KL retain term (:func:`unilogit.losses.kl_retain_loss`) with
    every token as a label, so evaluation and training share one KL.
    """
    model.eval()
    reference_model.eval()
    device, ref_device = model_device(model), model_device(reference_model)

    def kl_sums(input_ids: torch.Tensor, attention: torch.Tensor, lengths: list[int]) -> list[tuple[float, int]]:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        ref_logits = reference_model(input_ids=input_ids.to(ref_device), attention_mask=attention.to(ref_device)).logits
        if logits.size(-1) != ref_logits.size(-1):
            raise ValueError(f"vocabularies differ: {logits.size(-1)} vs {ref_logits.size(-1)} logits")
        out = []
        for row, n in enumerate(lengths):
            labels = input_ids[row : row + 1, :n].to(logits.device)
            mean = kl_retain_loss(logits[row : row + 1, :n], ref_logits[row : row + 1, :n].to(logits.device), labels)
            out.append((float(mean) * (n - 1), n - 1))
        return out

    sums = map_right_padded(tokenizer, texts, batch_size, max_length, desc, kl_sums)
    total, count = 0.0, 0
    for kl, positions in sums:  # summed in text order, as one pass over the batches would
        total += kl
        count += positions
    if count == 0:
        raise ValueError("mean_token_kl needs texts with at least two tokens")
    return total / count
