"""``unilogit report RUN_DIR``: forget and retain NLL of an unlearn run against its initial model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_config
from unilogit import cli
from unilogit.stage.entry import run_unlearn_from_config


def test_report_of_a_run_raises_the_forget_nll_and_refuses_to_overwrite(
    memorized_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "ga"
    run_unlearn_from_config(base_config(memorized_model_dir, run_dir, unlearn_method="ga", learning_rate=1e-2))
    capsys.readouterr()

    assert cli.main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()  # llamafactory prints a tokenized example first
    out = printed[printed.index(f"unlearning report: ga ({run_dir})") :]
    assert out[2:4] == ["| metric | initial | unlearned | change |", "|---|---:|---:|---:|"]
    report = json.loads((run_dir / "report.json").read_text())
    forget = report["nll"]["forget"]
    assert forget["unlearned"] > forget["initial"], "gradient ascent raised the forget NLL"
    assert f"| forget NLL (higher = forgotten) | {forget['initial']:.4f} | {forget['unlearned']:.4f} |" in out[4]
    assert any(line.startswith("| loss (last step) |  | ") for line in out)

    before = (run_dir / "report.json").read_bytes()
    assert cli.main(["report", str(run_dir)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (run_dir / "report.json").read_bytes() == before
