"""What the benchmark commands share: the repository root, and argparse that fails with one line."""

from __future__ import annotations

import argparse
from pathlib import Path

from unilogit.stage.args import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


class CommandParser(argparse.ArgumentParser):
    """argparse that fails with our one-line ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> None:
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


def data_path(data: str) -> str:
    """``data`` as given, or under the repository when it names one of the repository's folders."""
    return str(ROOT / data) if not Path(data).exists() and (ROOT / data).exists() else data
