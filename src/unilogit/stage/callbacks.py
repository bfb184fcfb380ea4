"""Callbacks of the unlearn stage."""

from __future__ import annotations

from typing import Any

from llamafactory.train.callbacks import LogCallback

TERM_KEYS = ("forget_loss", "retain_loss", "npo_log_ratio")


class UnlearningLogCallback(LogCallback):
    """llamafactory's ``trainer_log.jsonl`` writer, with each unlearning term added to its lines.

    ``LogCallback.on_log`` builds its line from a fixed key list and hands it to a writer thread, so
    the terms are keyed by step here and merged in when the writer runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._terms: dict[int, dict[str, float]] = {}

    def on_log(self, args, state, control, **kwargs):
        terms = {k: state.log_history[-1][k] for k in TERM_KEYS if k in state.log_history[-1]}
        if terms:
            self._terms[state.global_step] = terms
        super().on_log(args, state, control, **kwargs)

    def _write_log(self, output_dir: str, logs: dict[str, Any]) -> None:
        super()._write_log(output_dir, {**logs, **self._terms.pop(logs.get("current_steps"), {})})
