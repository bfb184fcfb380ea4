"""Answer likelihood on a tokenized forget or retain set: the simplest evidence of forgetting."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from unilogit.losses import IGNORE_INDEX, sequence_nll


@torch.no_grad()
def dataset_nll(model: torch.nn.Module, dataset: Any, batch_size: int = 8, desc: str = "NLL") -> float:
    """Token-mean NLL of the supervised tokens (label != -100) of a llamafactory-tokenized dataset."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        rows = dataset[start : start + batch_size]
        width = max(len(ids) for ids in rows["input_ids"])
        input_ids = torch.full((len(rows["input_ids"]), width), 0, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention = torch.zeros_like(input_ids)
        for i, (ids, lab) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        nll, counts = sequence_nll(logits, labels.to(device))
        total += float(nll.sum())
        count += int(counts.sum())
    return total / max(count, 1)
