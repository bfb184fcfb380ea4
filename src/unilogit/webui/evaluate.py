"""The Evaluate action: run a benchmark's ``unilogit eval`` command on a run's output folder.

Each benchmark is one :class:`Benchmark` entry in :data:`BENCHMARKS`; the panel's dropdown lists
them. An evaluator whose command follows the same flags (``--model``, ``--data``, ``--max-examples``,
``--overwrite``) is one more entry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    """An evaluator that the Evaluate button runs as ``unilogit eval <command> --model RUN ...``."""

    command: str
    default_data: str
    results: str  # the Markdown table the command writes, relative to the model folder
    takes_retrain: bool = True

    def argv(self, model: str, data: str, retrain: str | None, max_examples: str, overwrite: bool) -> list[str]:
        """The ``unilogit`` arguments that evaluate ``model``; the command itself checks the values."""
        argv = ["eval", self.command, "--model", model, "--data", data or self.default_data]
        if retrain and self.takes_retrain:
            argv += ["--retrain", retrain]
        if max_examples.strip():
            argv += ["--max-examples", max_examples.strip()]
        if overwrite:
            argv.append("--overwrite")
        return argv


BENCHMARKS: dict[str, Benchmark] = {
    "MUSE": Benchmark("muse", "data/muse_mini", "muse_eval/muse_results.md"),
    # RWKU is zero-shot: there is no retrained model to compare with.
    "RWKU": Benchmark("rwku", "data/rwku_mini", "rwku_eval/rwku_results.md", takes_retrain=False),
}

_REFRESH_S = 1.0


def run_benchmark(benchmark: Benchmark, argv: list[str], model: str) -> Iterator[tuple[str, bool | None]]:
    """Run ``unilogit <argv>`` and yield ``(markdown, ok)``: the output's tail while it runs (``ok`` None),
    then the results table (``ok`` True) or the error with the command's last lines (``ok`` False)."""
    cmd = [sys.executable, "-m", "unilogit.cli", *argv]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    tail: deque[str] = deque(maxlen=12)
    shown = 0.0
    # Text mode turns tqdm's carriage returns into line ends, so its progress arrives line by line.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                tail.append(line.rstrip())
            if time.monotonic() - shown > _REFRESH_S:
                shown = time.monotonic()
                yield _code(["unilogit " + " ".join(argv), *tail]), None
        code = proc.wait()
    results = Path(model) / benchmark.results
    if code == 0 and results.is_file():
        yield results.read_text(), True
        return
    # The CLI ends a configuration mistake with one "unilogit: error: ..." line; put it first.
    errors = [line for line in tail if line.startswith("unilogit: error:")]
    yield "\n\n".join([*errors, f"Exit code {code}.", _code(list(tail))]), False


def _code(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"
