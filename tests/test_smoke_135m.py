"""Two steps of Unilogit on the embedded SmolLM2-135M-Instruct, through the shipped LoRA example."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import ROOT, run_cli


def test_two_unilogit_steps_on_the_embedded_model(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        str(ROOT / "examples/unlearn/unilogit_lora.yaml"),
        "max_steps=2",
        f"output_dir={tmp_path}",
        "report_to=none",
        "plot_loss=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "trainer_log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert [row["current_steps"] for row in steps] == [1, 2]
    for row in steps:
        assert math.isfinite(row["forget_loss"]) and row["forget_loss"] > 0  # KL to the 1/|V| target
        assert math.isfinite(row["retain_loss"]) and row["retain_loss"] >= 0
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8
