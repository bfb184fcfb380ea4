"""The Evaluate action: run a benchmark's ``unilogit eval`` command on a run's output folder.

The panel's dropdown lists the benchmarks of :data:`unilogit.benchmarks.registry.BENCHMARKS` by title
(:func:`benchmarks`); each descriptor gives its command (``Benchmark.eval_argv``), its default data and the
results table the command writes.

An evaluation is an :class:`EvalJob`: a child process that belongs to the server, not to the page, so
closing the tab leaves it running and a reopened tab shows its progress (each split's progress bar and
elapsed time) and then its table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from unilogit.benchmarks.registry import BENCHMARKS, Benchmark
from unilogit.webui.markup import escape


def benchmarks() -> dict[str, Benchmark]:
    """The registry's benchmarks by title, as the dropdown lists them; read at each call, so that a benchmark
    registered after this module was imported is listed too."""
    return {benchmark.title: benchmark for benchmark in BENCHMARKS.values()}


# A tqdm bar as the evaluators print it: "VerbMem:  50%|█████     | 1/2 [00:03<00:03, 3.1s/it]".
_BAR = re.compile(r"^(?P<split>[^|]+?):\s+\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)\b")
_TAIL_LINES = 12


@dataclass
class Split:
    """One progress bar of the evaluation: a split, or a metric's pass over one."""

    done: int
    total: int
    started: float
    finished: float | None = None

    def elapsed(self, now: float) -> float:
        """Seconds spent on this split so far, or in all once it has finished."""
        return (self.finished or now) - self.started


@dataclass
class Progress:
    """What an evaluation has printed: its progress bars by split, and its last other lines."""

    splits: dict[str, Split] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    def take(self, line: str, now: float) -> None:
        """Account for one line of output printed at ``now``."""
        line = line.strip()
        if not line:
            return
        bar = _BAR.match(line)
        if bar is None:
            self.tail.append(line)
            return
        name, done, total = bar["split"], int(bar["done"]), int(bar["total"])
        # The evaluators run one bar at a time, and a bar closed with leave=False may never print its last
        # count: a new bar means the ones before it are done.
        for other_name, other in self.splits.items():
            if other_name != name and other.finished is None:
                other.done, other.finished = other.total, now
        split = self.splits.setdefault(name, Split(done, total, now))
        split.done, split.total = done, total
        split.finished = now if done >= total else None

    def table(self, now: float) -> str:
        """A Markdown table: each split's count and elapsed time."""
        if not self.splits:
            return "Loading the model and the data ..."
        rows = [
            f"| {escape(name)} | {split.done}/{split.total} ({100 * split.done // max(split.total, 1)}%) "
            f"| {_clock(split.elapsed(now))} |"
            for name, split in self.splits.items()
        ]
        return "\n".join(["| Split | Progress | Elapsed |", "|---|---|---|", *rows])

    def finish(self, now: float, ok: bool) -> None:
        """The command has ended (``ok``: successfully, so every bar ran to its end)."""
        for split in self.splits.values():
            split.finished = split.finished or now
            split.done = split.total if ok else split.done


@dataclass
class EvalJob:
    """``unilogit <argv>`` in a child process, its output read by a thread of the server."""

    benchmark: Benchmark
    argv: list[str]
    model: str
    started: float = field(default_factory=time.monotonic)
    progress: Progress = field(default_factory=Progress)
    code: int | None = None
    ended: float | None = None

    def __post_init__(self) -> None:
        cmd = [sys.executable, "-m", "unilogit.cli", *self.argv]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        # Text mode turns tqdm's carriage returns into line ends, so each bar update arrives as a line.
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"unilogit-eval-{self.benchmark.name}", daemon=True)
        self._reader.start()

    @property
    def running(self) -> bool:
        """Whether the command has not ended yet."""
        return self.ended is None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                self.progress.take(line, time.monotonic())
        code = self._proc.wait()
        with self._lock:
            self.code, self.ended = code, time.monotonic()
            self.progress.finish(self.ended, ok=code == 0)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the command has ended and its output is read; its exit code (None: still running)."""
        self._reader.join(timeout)
        return self.code

    def view(self) -> tuple[str, bool | None]:
        """``(markdown, ok)``: the progress while it runs (``ok`` None), then the results table (``ok`` True)
        or the error with the command's last lines (``ok`` False)."""
        with self._lock:
            now = self.ended or time.monotonic()
            table = self.progress.table(now)
            tail = list(self.progress.tail)
            code = self.code
        results = Path(self.model) / self.benchmark.eval_results_md
        if code == 0 and results.is_file():
            return results.read_text(encoding="utf-8"), True
        state = "running" if code is None else f"ended with exit code {code}"
        head = f"**{self.benchmark.title}** evaluation of {escape(self.model)}: {state}, {_clock(now - self.started)}"
        if code is None:
            return "\n\n".join([head, table, _code(tail)]), None
        # The CLI ends a configuration mistake with one "unilogit: error: ..." line; put it first.
        errors = [escape(line) for line in tail if line.startswith("unilogit: error:")]
        return "\n\n".join([*errors, head, _code(tail)]), False


_JOBS: dict[str, EvalJob] = {}
_JOBS_LOCK = threading.Lock()


def start_evaluation(benchmark: Benchmark, argv: list[str], model: str) -> tuple[EvalJob, bool]:
    """Start evaluating ``model``, or find the evaluation of it that still runs; ``(job, already_running)``."""
    key = str(Path(model).resolve())
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job is not None and job.running:
            return job, True
        job = _JOBS[key] = EvalJob(benchmark, argv, model)
        return job, False


def latest_evaluation() -> EvalJob | None:
    """The evaluation started last in this server, running or not (what a reopened page shows)."""
    with _JOBS_LOCK:
        return max(_JOBS.values(), key=lambda job: job.started, default=None)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _code(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


def follow_evaluation(job: EvalJob, every_s: float = 1.0) -> Iterator[tuple[str, bool | None]]:
    """:meth:`EvalJob.view` every ``every_s`` seconds until it holds the table or the error."""
    while True:
        text, ok = job.view()
        yield text, ok
        if ok is not None:
            return
        job.wait(every_s)
