"""What the Train tab shows of a run: its log, its progress bar and its loss plot.

LLaMA Board reads these from the run's folder (``running_log.txt``, ``trainer_log.jsonl``) every two
seconds. Loading a model logs its configuration at every load (six times for an unlearning run), and
the bar stays hidden until the first logged step, minutes into a run on a CPU. So the log shows each
repeated message once, the bar shows the time since Start and the latest message until the first step,
and the plot adds the unlearning terms ``forget_loss`` and ``retain_loss`` to the loss.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import gradio as gr

# LLaMA Board's log view keeps this many characters of the end of the log.
_LOG_CHARS = 20_000
# A record of llamafactory's LoggerHandler starts "[LEVEL|time] file:line >> message"; its message may
# span lines (a model config does).
_RECORD = re.compile(r"^\[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\|[^\n]*? >> ", re.MULTILINE)
PLOTTED = (("loss", "#1f77b4"), ("forget_loss", "#d62728"), ("retain_loss", "#2ca02c"))
_PREPARING = {"en": "Preparing", "zh": "准备中"}

_started: dict[str, float] = {}
_started_lock = threading.Lock()


def run_started(output_dir: str) -> None:
    """Note that a run writing into ``output_dir`` starts now (its bar counts from here)."""
    with _started_lock:
        _started[os.path.realpath(output_dir)] = time.monotonic()


def running_log(text: str) -> str:
    """``running_log.txt`` with each repeated message (the model config, the files loaded) kept once only."""
    starts = [match.start() for match in _RECORD.finditer(text)]
    if not starts:
        return text
    kept, seen = [text[: starts[0]]], set()
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        record = text[start:end]
        message = record.split(" >> ", 1)[1]
        if message not in seen:
            seen.add(message)
            kept.append(record)
    return "".join(kept)


def loss_plot(trainer_log: list[dict[str, Any]]) -> Any:
    """The loss curves of ``trainer_log.jsonl``'s rows: the loss and, where logged, the unlearning terms, each
    raw (faint) and smoothed (labelled), as LLaMA Board draws the loss."""
    import matplotlib.pyplot as plt
    from llamafactory.extras.ploting import smooth

    plt.close("all")
    plt.switch_backend("agg")
    fig = plt.figure()
    ax = fig.add_subplot(111)
    for key, color in PLOTTED:
        points = [(row["current_steps"], row[key]) for row in trainer_log if row.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, color=color, alpha=0.4)
            ax.plot(steps, smooth(list(values)), color=color, label=key)
    ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return fig


def trainer_info(
    original: Callable[[str, Any, bool], tuple[str, Any, dict[str, Any]]], lang: str, output_path: Any, do_train: bool
) -> tuple[str, Any, dict[str, Any]]:
    """LLaMA Board's ``get_trainer_info`` (``original``) with the log above and the bar shown from the start."""
    log, progress, info = original(lang, output_path, do_train)
    path = Path(output_path)
    raw = _read(path / "running_log.txt")
    if raw:
        log = "```\n" + running_log(raw)[-_LOG_CHARS:] + "\n```\n"
    with _started_lock:
        started = _started.get(os.path.realpath(path))
    if started is not None and not _read(path / "trainer_log.jsonl").strip():
        messages = [match.end() for match in _RECORD.finditer(raw)]
        latest = raw[messages[-1] :].strip().splitlines()[0][:120] if messages else ""
        elapsed = timedelta(seconds=int(time.monotonic() - started))
        label = f"{_PREPARING.get(lang, _PREPARING['en'])} {elapsed}" + (f": {latest}" if latest else "")
        progress = gr.Slider(label=label, value=0, visible=True)
    return log, progress, info


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
