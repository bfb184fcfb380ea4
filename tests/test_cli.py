"""The ``unilogit`` command as a user runs it: help, version, stage hand-off and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, base_config, run_cli
from unilogit import cli
from unilogit.launch import needs_torchrun


def _run_in_process(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """``cli.main`` in this process (llamafactory is imported once, not per case); returns (code, stderr)."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("unilogit: error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def test_help_and_version() -> None:
    helped = run_cli("--help")
    assert helped.returncode == 0 and "train CONFIG.yaml" in helped.stdout
    version = run_cli("version")
    assert version.returncode == 0 and "llamafactory 0.9.5" in version.stdout


def test_help_lists_a_benchmark_registered_after_the_cli_was_imported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from unilogit.benchmarks.registry import BENCHMARKS, RWKU

    usage = "  eval late --model M                 a late benchmark\n  late table RESULTS.json            its table\n"
    monkeypatch.setitem(BENCHMARKS, "late", dataclasses.replace(RWKU, name="late", usage=usage))
    assert cli.main(["help"]) == 0
    assert usage in capsys.readouterr().out
    assert cli.main(["late", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unilogit late SUBCOMMAND") and "late table RESULTS.json" in out


def _commands() -> list[list[str]]:
    """Every command and subcommand that ``unilogit help`` lists, less llamafactory's ("chat | export | ...")."""
    entries = [line.split("  ")[1] for line in cli.usage().splitlines() if re.match(r"  \w", line)]
    ours = [entry.split() for entry in entries if " | " not in entry]
    found = {(words[0],) for words in ours}
    found |= {tuple(words[:2]) for words in ours if len(words) > 1 and re.fullmatch("[a-z]+", words[1])}
    return sorted(list(command) for command in found)


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_a_help(command: list[str], capsys: pytest.CaptureFixture) -> None:
    """``--help`` works on every command: it prints help, plain text (no PROG, no reST backticks), and exits 0
    without running anything (``report --help`` once took --help for a folder)."""
    try:
        code = cli.main([*command, "--help"])
    except SystemExit as stop:  # argparse's --help
        code = stop.code
    out, err = capsys.readouterr()
    assert code in (0, None) and not err, err
    assert out.startswith("usage:") and " ".join(command) in out, out
    assert "PROG" not in out and "`" not in out, out


def test_train_help_lists_the_unlearning_keys_first() -> None:
    """``unilogit train --help`` as a process: our keys, each with its help, then a pointer to llamafactory's
    keys instead of their 1,500 lines."""
    helped = run_cli("train", "--help")
    assert helped.returncode == 0, helped.stderr[-2000:]
    out = helped.stdout
    keys = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert keys[:2] == ["unlearn_method", "retain_dataset"] and {"npo_beta", "unilogit_divergence"} <= set(keys)
    assert out.rstrip().endswith("llamafactory-cli train --help") and len(out.splitlines()) < 100
    assert "per_device_train_batch_size" not in out


def test_sft_stage_goes_to_llamafactory(memorized_model_dir: str) -> None:
    """``stage: sft`` through ``unilogit train`` (the fixture) trains the target model with llamafactory."""
    out = Path(memorized_model_dir)
    assert (out / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "forget_loss" not in rows[0]  # llamafactory's own SFT workflow ran, not ours


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["unlearn_methd=ga"], "unknown config key 'unlearn_methd'; did you mean 'unlearn_method'?"),
        (["unlearn_method=foo"], "unlearn_method: 'foo' is not valid; allowed values: ga | npo | simnpo | undial"),
        (["retain_loss=l2"], "retain_loss: 'l2' is not valid; allowed values: none | nll | kl"),
        (["npo_beta=-1"], "npo_beta: -1 is out of range"),
        (["retain_weight=-0.5"], "retain_weight: -0.5 is out of range"),
        (["unilogit_target=teacher"], "unilogit_target: 'teacher' is not valid; allowed values: current | initial"),
        (["unilogit_divergence=js"], "unilogit_divergence: 'js' is not valid; allowed values: reverse | forward"),
        (["retain_dataset=null", "retain_loss=kl"], "retain_loss"),
        (["dataset=nope"], "Undefined dataset nope"),
        (["ref_offload=maybe"], "ref_offload: 'maybe' is not valid; use true or false"),
        (
            ["ref_offload=true", "deepspeed=examples/deepspeed/ds_z3_config.json"],
            "ref_offload: DeepSpeed and FSDP shard the reference model",
        ),
    ],
)
def test_bad_values_give_one_line_errors(
    overrides: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = str(ROOT / "examples/unlearn/unilogit_full.yaml")
    code, stderr = _run_in_process(capsys, "train", config, f"output_dir={tmp_path}", *overrides)
    assert code == 2
    assert expected in _error_line(stderr)


def test_console_script_exits_2_with_one_line() -> None:
    result = run_cli("train", str(ROOT / "examples/unlearn/ga_full.yaml"), "unlearn_methd=ga")
    assert result.returncode == 2
    assert "did you mean 'unlearn_method'?" in _error_line(result.stderr)


def test_yaml_syntax_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stage: unlearn\nunlearn_method: [ga\n")
    code, stderr = _run_in_process(capsys, "train", str(path))
    assert code == 2
    assert _error_line(stderr) == (
        f"unilogit: error: {path}: YAML syntax error at line 3, column 1: did not find expected ',' or ']'; "
        "fix the file"
    )


def test_missing_config_file(capsys: pytest.CaptureFixture) -> None:
    code, stderr = _run_in_process(capsys, "train", "no/such/config.yaml")
    assert code == 2
    assert _error_line(stderr) == "unilogit: error: config file no/such/config.yaml does not exist; check the path"


def test_empty_forget_set_is_refused(tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """cutoff_len so short that no answer token survives: an error, not a run that divides by zero."""
    config = base_config(tiny_model_dir, tmp_path / "out", unlearn_method="ga", cutoff_len=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, stderr = _run_in_process(capsys, "train", str(path))
    assert code == 2
    assert "no supervised tokens" in _error_line(stderr)


def test_adapter_folder_without_adapter_config_is_one_line(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """adapter_name_or_path naming a folder that holds no LoRA adapter (here: a full model's folder) is refused
    before anything loads, whatever the stage (llamafactory's sft too), rather than a traceback from peft."""
    for stage in ("unlearn", "sft"):
        config = base_config(
            tiny_model_dir, tmp_path / "out", stage=stage, finetuning_type="lora",
            adapter_name_or_path=f"{tiny_model_dir}", retain_dataset=None if stage == "sft" else "example_retain",
        )  # fmt: skip
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml.safe_dump(config))
        code, stderr = _run_in_process(capsys, "train", str(path))
        assert code == 2, stderr[-2000:]
        line = _error_line(stderr)
        assert "adapter_name_or_path" in line and tiny_model_dir in line and "adapter_config.json" in line, line
    assert not (tmp_path / "out").exists()


def test_torchrun_relaunch_follows_llamafactory(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORCE_TORCHRUN relaunches (as llamafactory's launcher does); a torchrun worker never relaunches."""
    assert not needs_torchrun()  # one CPU process
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    assert needs_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not needs_torchrun()
