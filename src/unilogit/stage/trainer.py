"""The one unlearning trainer: forget term + λ · retain term, on paired forget/retain batches.

Subclasses llamafactory's ``CustomSeq2SeqTrainer`` for its optimizer and scheduler hooks and its
reference-model preparation (DeepSpeed ZeRO-3 shards it, FSDP or plain accelerate otherwise).

The reference model runs under ``no_grad`` before the policy's forward passes, and only what a term
needs is kept of it (one NLL per sequence for NPO, the logits at supervised positions otherwise), so its
transient ``[B, T, V]`` logits never coincide with the policy's activations. With ``ref_offload`` the
frozen copy of full fine-tuning waits on the CPU and visits the accelerator for those forwards.

Averaging under gradient accumulation: every term is a token mean (GA, UnDIAL, Unilogit, NLL, KL)
or a sequence mean (NPO, SimNPO). A micro-batch term m with n items is weighted n / N, N the item
count of the whole accumulation window on all processes, so that the summed gradient equals that
of one big batch (2 micro-batches × 2 steps = one batch of 4).

With ``soft_target_kl_model`` (UnDIAL, Unilogit) the trainer also logs ``soft_target_kl`` before training
(epoch 0) and after every epoch: how far the forget term's soft target is from a retrained model's
outputs on the forget set (see :meth:`UnlearningTrainer.soft_target_kl`).
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from typing_extensions import override

from unilogit import losses
from unilogit.errors import ConfigError, TrainingDiverged
from unilogit.stage.data import FORGET, RETAIN, PairedDataset
from unilogit.stage.methods import METHODS

if TYPE_CHECKING:
    from unilogit.stage.args import UnlearningArguments

# The scalars the trainer logs beside llamafactory's: the two terms of every step, and the soft-target KL of
# every epoch; a method adds the extras its forget term returns (``Method.logged``), see :func:`logged_terms`.
FORGET_TERM, RETAIN_TERM, SOFT_TARGET_KL = "forget_loss", "retain_loss", "soft_target_kl"


def logged_terms() -> tuple[str, ...]:
    """Every scalar the trainer may log beside llamafactory's, for the registered methods as they are now."""
    extras = dict.fromkeys(name for method in METHODS.values() for name in method.logged)
    return (FORGET_TERM, RETAIN_TERM, *extras, SOFT_TARGET_KL)


def _counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[supervised tokens, sequences with at least one supervised token] of one side of a batch."""
    mask = batch["labels"][:, 1:] != losses.IGNORE_INDEX
    return torch.stack([mask.sum(), mask.any(dim=1).sum()])


class _PairingEpochCallback(TrainerCallback):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class _SoftTargetKLCallback(TrainerCallback):
    """Logs the soft-target KL before training and after every epoch; frees the retrained model at the end."""

    def __init__(self, trainer: UnlearningTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run logged its epoch 0 before
            self.trainer.log_soft_target_kl()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.log_soft_target_kl()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.soft_target_model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class UnlearningTrainer(CustomSeq2SeqTrainer):
    """Computes L = L_forget + λ · L_retain and logs each term."""

    def __init__(
        self, unlearning_args: UnlearningArguments, soft_target_model: torch.nn.Module | None = None, **kwargs: Any
    ) -> None:
        if soft_target_model is not None and unlearning_args.method.soft_target is None:
            raise ConfigError(
                f"soft_target_kl_model: {unlearning_args.unlearn_method} has no soft targets; "
                "remove soft_target_kl_model"
            )
        offloaded = kwargs.pop("ref_model") if unlearning_args.ref_offload else None
        super().__init__(**kwargs)
        if offloaded is not None:
            # Not prepared by accelerate, which would move it to the accelerator for good (the workflow
            # refuses ref_offload under DeepSpeed and FSDP, which shard it instead).
            self.ref_model = offloaded.to("cpu").eval()
        self.unlearning_args = unlearning_args
        self.method = unlearning_args.method
        # Our loss does its own accumulation scaling (see module docstring); this flag stops the
        # base trainer from dividing by the number of accumulation steps a second time.
        self.model_accepts_loss_kwargs = True
        self._term_sums: dict[str, list[float]] = defaultdict(list)
        if self.train_dataset is not None and hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_PairingEpochCallback(self.train_dataset))
        # The retrained model of soft_target_kl_model: frozen, in eval mode, on the device (never prepared).
        self.soft_target_model = soft_target_model
        if soft_target_model is not None:
            self.add_callback(_SoftTargetKLCallback(self))

    @override
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        window = {
            side: sum(_counts(b[side]) for b in batch_samples).to(device)
            for side in (batch_samples[0] if batch_samples else {})
        }
        if self.args.world_size > 1:
            window = {side: self.accelerator.gather(c.unsqueeze(0)).sum(0) for side, c in window.items()}
        return batch_samples, window

    @override
    def _track_num_input_tokens(self, inputs):
        if self.args.include_num_input_tokens_seen == "no":
            return
        tokens = sum(side["attention_mask"].sum() for side in inputs.values())
        tokens = torch.as_tensor(tokens, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()

    @override
    def floating_point_ops(self, inputs):
        return sum(super(UnlearningTrainer, self).floating_point_ops(side) for side in inputs.values())

    @contextmanager
    def _reference_on_device(self) -> Iterator[None]:
        """With ``ref_offload``, bring the frozen reference to the accelerator and back to the CPU after."""
        offload = self.unlearning_args.ref_offload and self.ref_model is not None
        if offload:
            self.ref_model.to(self.args.device)
        try:
            yield
        finally:
            if offload:
                self.ref_model.to("cpu")

    def _reference(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], statistic: str) -> torch.Tensor:
        """What a term needs of the initial model θ_o on one side of the batch, without gradients.

        ``statistic`` is ``"sequence_nll"`` (``[B]``) or ``"rows"`` (the logits at supervised positions,
        ``[N, V]`` in the model's dtype); the ``[B, T, V]`` reference logits are dropped here. Full/freeze
        tuning: the frozen copy llamafactory built. LoRA: the same weights with the adapter disabled, so no
        second model exists in memory.
        """
        with torch.no_grad():
            if self.ref_model is not None:
                logits = self.ref_model(**_model_inputs(batch)).logits
            else:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    logits = model(**_model_inputs(batch)).logits
            if statistic == "sequence_nll":
                return losses.sequence_nll(logits, batch["labels"])[0]
            return losses.supervised_rows(logits, batch["labels"])

    def soft_target_kl(self) -> float:
        """Token mean over the forget set's supervised tokens of KL(p_retrain ‖ p̃).

        p̃ is the forget term's soft target (``Method.soft_target``: UnDIAL's teacher softmax(z_ref − γ·e_y),
        Unilogit's uniform-logit target built from the current model, or from θ_o with ``unilogit_target:
        initial``) and p_retrain the output distribution of ``soft_target_kl_model``; per position
        KL = Σ_v p_retrain(v)·(log p_retrain(v) − log p̃(v)), in fp32, summed in float64. The whole forget set
        in order, in batches of ``per_device_train_batch_size``, without gradients and with the model in eval
        mode (restored after). Every process computes it over the whole set, so that sharded models (ZeRO-3)
        run their forward passes together.
        """
        if self.soft_target_model is None:
            raise RuntimeError("soft_target_kl needs soft_target_kl_model")
        forget = getattr(self.train_dataset, "forget", None)
        if forget is None:
            raise RuntimeError("soft_target_kl needs the PairedDataset of the unlearn workflow as train_dataset")
        loader = DataLoader(
            PairedDataset(forget, None, self.args.seed),
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=self.data_collator,
        )
        target_fn = self.method.soft_target
        model = self.model
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.args.device)
        count = 0
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                for batch in loader:
                    side = self._prepare_inputs(batch)[FORGET]
                    labels = side["labels"]
                    _, _, y = losses.supervised_index(labels)
                    if y.numel() == 0:
                        continue
                    if self.unlearning_args.needs_forget_reference:
                        with self._reference_on_device():
                            source = self._reference(model, side, "rows")
                    else:
                        source = losses.supervised_rows(model(**_model_inputs(side)).logits, labels)
                    retrain = losses.supervised_rows(self.soft_target_model(**_model_inputs(side)).logits, labels)
                    step = max(1, losses.CHUNK_ELEMENTS // max(source.size(-1), 1))
                    for start in range(0, y.numel(), step):
                        rows = slice(start, start + step)
                        target = target_fn(source[rows], y[rows], self.unlearning_args)
                        # KL(p_retrain ‖ p̃): the forward KL with p̃'s log-probabilities as the model's logits.
                        total += losses.forward_kl_rows(target, retrain[rows]).double().sum()
                    count += y.numel()
        finally:
            model.train(was_training)
        return float(total) / max(count, 1)

    def log_soft_target_kl(self) -> None:
        """Log ``soft_target_kl`` (see :meth:`soft_target_kl`) at the current epoch (0 before training)."""
        if self.state.epoch is None:
            self.state.epoch = 0.0
        self.log({SOFT_TARGET_KL: self.soft_target_kl()})

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.unlearning_args
        window = num_items_in_batch if isinstance(num_items_in_batch, dict) else None
        scale = self.accelerator.num_processes if window is not None else 1
        reduction_index = 0 if self.method.reduction == "token" else 1

        forget = inputs[FORGET]
        retain = inputs.get(RETAIN) if args.retain_loss != "none" else None
        forget_ref = retain_ref = None
        with self._reference_on_device():
            if args.needs_forget_reference:
                forget_ref = self._reference(model, forget, self.method.reference_statistic)
            if retain is not None and args.needs_retain_reference:
                retain_ref = self._reference(model, retain, "rows")

        # One forward pass over both sides: DDP and ZeRO expect one forward per backward.
        batch = _concatenate([forget] if retain is None else [forget, retain])
        rows = forget["input_ids"].size(0)
        # split, not two slices: its backward concatenates the two sides' gradients into one buffer,
        # where each slice's backward would allocate a zero-filled gradient of the whole batch.
        split = [rows, batch["input_ids"].size(0) - rows]
        all_logits = model(**_model_inputs(batch)).logits.split(split)
        all_labels = batch["labels"].split(split)
        logits, labels = all_logits[0], all_labels[0]
        forget_loss, extras = self.method.forget_term(logits, labels, forget_ref, args)
        if not extras.keys() <= set(self.method.logged):  # they would be missing from trainer_log.jsonl
            raise ValueError(
                f"{self.method.name}: its forget term returned {sorted(extras)}; declare them in Method.logged "
                f"(now {self.method.logged})"
            )
        total = forget_loss * _weight(forget, window, FORGET, reduction_index, scale)
        terms = {FORGET_TERM: forget_loss, **extras}

        if retain is not None:
            retain_logits, retain_labels = all_logits[1], all_labels[1]
            if retain_ref is not None:
                retain_loss = losses.kl_retain_loss(retain_logits, retain_ref, retain_labels)
            else:
                retain_loss = losses.nll_loss(retain_logits, retain_labels)
            total = total + args.retain_weight * retain_loss * _weight(retain, window, RETAIN, 0, scale)
            terms[RETAIN_TERM] = retain_loss

        if model.training:
            for name, value in terms.items():
                number = float(value.detach())
                if not math.isfinite(number):
                    self._diverged(name, number)
                self._term_sums[name].append(number)
        return (total, {"logits": logits}) if return_outputs else total

    def _diverged(self, term: str, value: float) -> None:
        """Stop before the optimizer applies a non-finite gradient: the checkpoints on disk stay good ones."""
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        raise TrainingDiverged(
            f"step {self.state.global_step + 1}: {term} is {value}; the run stopped before that update and {kept}. "
            "Lower learning_rate (or the method's hyperparameters) and resume_from_checkpoint or start again"
        )

    @override
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._term_sums:
            for name, values in self._term_sums.items():
                mean = torch.tensor(sum(values) / len(values), device=self.args.device)
                logs[name] = float(self.accelerator.reduce(mean, reduction="mean"))
            self._term_sums.clear()
        super().log(logs, *args, **kwargs)

    @override
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _weight(
    batch: dict[str, torch.Tensor], window: dict[str, torch.Tensor] | None, side: str, index: int, scale: int
) -> torch.Tensor | float:
    """n_micro / N_window × processes: the micro-batch's share of the accumulation window."""
    if window is None:
        return 1.0
    return _counts(batch)[index].to(window[side].device) * scale / window[side][index].clamp(min=1)


_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": losses.IGNORE_INDEX}


def _concatenate(sides: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The sides stacked into one batch, each right-padded to the longest.

    Right padding (attention mask 0, label -100) leaves the logits of every real position unchanged:
    attention is causal and positions count from the left.
    """
    if len(sides) == 1:
        return sides[0]
    unknown = set(sides[0]) - set(_PAD_VALUES)
    if unknown:
        raise ValueError(f"cannot stack forget and retain batches with keys {sorted(unknown)}")
    length = max(side["input_ids"].size(1) for side in sides)
    return {
        key: torch.cat([F.pad(side[key], (0, length - side[key].size(1)), value=pad) for side in sides])
        for key, pad in _PAD_VALUES.items()
    }


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Labels stay out of the forward: the model would otherwise compute its own loss for nothing.
    return {k: v for k, v in batch.items() if k != "labels"}
