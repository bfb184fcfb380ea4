"""Reliability: every bad input is one line and exit code 2 with nothing written; faults stop runs cleanly.

The table of bad inputs here is the one in docs/RELIABILITY.md: each case runs ``unilogit`` in this
process (``cli.main``), as a user would, and checks the single ``unilogit: error:`` line, the exit code,
and that the output folder was never created.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import base_config, run_cli
from unilogit import cli
from unilogit.config import cpu_has_fp16
from unilogit.stage.entry import run_unlearn_from_config

FIXTURES = Path(__file__).parent / "fixtures"


def _error_line(code: int, stderr: str) -> str:
    """The one ``unilogit: error:`` line of a refused command (exit code 2, no traceback, nothing else)."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("unilogit: error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def _dataset_dir(tmp_path: Path, text: str | None, columns: dict | None = None) -> Path:
    """A dataset_info.json with one dataset ``bad`` whose file holds ``text`` (no file when None)."""
    folder = tmp_path / "data"
    folder.mkdir()
    entry: dict = {"file_name": "bad.json"}
    if columns:
        entry["columns"] = columns
    (folder / "dataset_info.json").write_text(json.dumps({"bad": entry}))
    if text is not None:
        (folder / "bad.json").write_text(text)
    return folder


def _bad_data(text: str | None, columns: dict | None = None) -> Callable[[Path], dict]:
    def setup(tmp_path: Path) -> dict:
        folder = _dataset_dir(tmp_path, text, columns)
        return {"dataset": "bad", "dataset_dir": str(folder), "retain_dataset": None, "unlearn_method": "ga"}

    return setup


# (case id, config changes: a dict or a function of tmp_path returning one, expected part of the message)
TRAIN_CASES: list[tuple[str, dict | Callable[[Path], dict], str]] = [
    ("misspelled key", {"unlearn_methd": "ga"}, "unknown config key 'unlearn_methd'; did you mean 'unlearn_method'?"),
    ("unknown key", {"zzzz": 1}, "unknown config key 'zzzz'; remove it"),
    ("unknown method", {"unlearn_method": "foo"}, "unlearn_method: 'foo' is not valid; allowed values: ga | npo"),
    (
        "retain term without a retain set",
        {"unlearn_method": "npo", "retain_dataset": None, "retain_loss": "nll"},
        "retain_loss: nll needs a retain set; set retain_dataset",
    ),
    ("λ < 0", {"retain_weight": -0.5}, "retain_weight: -0.5 is out of range; use a finite number >= 0"),
    ("λ not a number", {"retain_weight": "heavy"}, "retain_weight: 'heavy' is not a number"),
    ("β = 0", {"unlearn_method": "npo", "npo_beta": 0}, "npo_beta: 0 is out of range; use a finite number > 0"),
    ("SimNPO β = inf", {"unlearn_method": "simnpo", "simnpo_beta": float("inf")}, "simnpo_beta: inf is out of range"),
    ("γ < 0", {"unlearn_method": "undial", "undial_gamma": -1}, "undial_gamma: -1 is out of range"),
    ("missing dataset file", _bad_data(None), "dataset: bad: File "),
    ("empty dataset file", _bad_data("[]"), 'dataset: bad: Instruction "train" corresponds to no data!'),
    (
        "wrong columns",
        _bad_data(json.dumps([{"question": "q", "answer": "a"}] * 4)),
        "dataset: bad has no column 'instruction'; rename it in the file or map it under \"columns\"",
    ),
    ("unknown dataset name", {"dataset": "nope"}, "Undefined dataset nope"),
    ("unknown retain dataset name", {"retain_dataset": "nope"}, "retain_dataset: Undefined dataset nope"),
    ("cutoff_len too small", {"cutoff_len": 1}, "no supervised tokens after templating and truncation"),
    ("model path missing", {"model_name_or_path": "/no/such/model"}, "model_name_or_path: /no/such/model does not"),
    ("unknown template", {"template": "nosuch"}, "template: 'nosuch': Template nosuch does not exist."),
    (
        "template of another model family",
        {"template": "llama3"},
        "template: 'llama3' does not match the model: it adds <|eom_id|>, <|eot_id|>, which the tokenizer lacks.",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_bad_train_input_is_one_line_and_writes_nothing(
    changes: dict | Callable[[Path], dict],
    expected: str,
    tiny_model_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    config = base_config(tiny_model_dir, out, overwrite_output_dir=False)
    config.update(changes(tmp_path) if callable(changes) else changes)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    line = _error_line(cli.main(["train", str(path)]), capsys.readouterr().err)
    assert expected in line
    assert not out.exists()


def _write_config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_output_folder_with_results_needs_overwrite(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An earlier run's log in output_dir: refused (llamafactory only looks for weights), and left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "trainer_log.jsonl").write_text('{"current_steps": 1, "loss": 1.0}\n')
    config = _write_config(tmp_path, base_config(tiny_model_dir, out, overwrite_output_dir=False))
    line = _error_line(cli.main(["train", config]), capsys.readouterr().err)
    assert "output_dir: " in line and "already holds results (trainer_log.jsonl); set overwrite_output_dir" in line
    assert [p.name for p in out.iterdir()] == ["trainer_log.jsonl"]
    assert (out / "trainer_log.jsonl").read_text() == '{"current_steps": 1, "loss": 1.0}\n'


Z3 = "examples/deepspeed/ds_z3_config.json"


def test_deepspeed_without_its_package_is_one_line_and_writes_nothing(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package is hidden: setup_env.sh installs it everywhere."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    out = tmp_path / "out"
    config = base_config(tiny_model_dir, out, overwrite_output_dir=False, deepspeed=Z3)
    line = _error_line(cli.main(["train", _write_config(tmp_path, config)]), capsys.readouterr().err)
    assert line == (
        "unilogit: error: deepspeed: the deepspeed package is not installed; run bash scripts/setup_env.sh "
        "(or pip install deepspeed), or remove deepspeed: to train without it"
    )
    assert not out.exists()


GPU_ONLY_CASES = [
    (
        "nccl",
        {"ddp_backend": "nccl"},
        "ddp_backend: nccl needs a GPU and none is visible; DeepSpeed on the CPU runs over gloo, so remove "
        "ddp_backend (or set it to gloo)",
    ),
    (
        "fp16",
        {"fp16": True},
        "fp16: this CPU has no fp16 kernels for DeepSpeed to train with; use bf16: true or neither",
    ),
    (
        "quantization",
        {"finetuning_type": "lora", "quantization_bit": 4},
        "quantization_bit: quantized training needs a GPU and none is visible; remove quantization_bit",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in GPU_ONLY_CASES], ids=[c[0] for c in GPU_ONLY_CASES])
def test_gpu_only_settings_under_deepspeed_on_the_cpu_are_one_line(
    changes: dict,
    expected: str,
    tiny_model_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each failed with a traceback once DeepSpeed started (nccl unavailable, DeepSpeed's "Type fp16 is not
    supported on your device", bitsandbytes); the device count is forced to 0 for GPU hosts."""
    import llamafactory.extras.misc

    if "fp16" in changes and cpu_has_fp16():
        pytest.skip("this CPU has oneDNN fp16 kernels, which DeepSpeed trains with")
    monkeypatch.setattr(llamafactory.extras.misc, "get_device_count", lambda: 0)
    out = tmp_path / "out"
    config = base_config(tiny_model_dir, out, overwrite_output_dir=False, deepspeed=Z3, **changes)
    line = _error_line(cli.main(["train", _write_config(tmp_path, config)]), capsys.readouterr().err)
    assert line == f"unilogit: error: {expected}"
    assert not out.exists()


def test_a_gpu_only_setting_is_refused_before_torchrun(tiny_model_dir: str, tmp_path: Path) -> None:
    """The drivers' DEEPSPEED=z3 NGPUS=2 path: one line from the launching process, not one per worker."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nccl is a valid backend here")
    out = tmp_path / "out"
    config = base_config(tiny_model_dir, out, overwrite_output_dir=False, deepspeed=Z3, ddp_backend="nccl")
    result = run_cli(
        "train", _write_config(tmp_path, config), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, timeout=120
    )
    line = _error_line(result.returncode, result.stderr)
    assert line.startswith("unilogit: error: ddp_backend: nccl needs a GPU and none is visible")
    assert "launching" not in result.stderr
    assert not out.exists()


def _broken_copy(tmp_path: Path, benchmark: str, damage: Callable[[Path], None]) -> str:
    data = tmp_path / benchmark
    shutil.copytree(FIXTURES / benchmark, data)
    damage(data)
    return str(data)


def _truncate(relative: str) -> Callable[[Path], None]:
    return lambda data: (data / relative).write_text('[{"prompt": "cut off in the mid')


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda data: shutil.rmtree(data / relative) if (data / relative).is_dir() else (data / relative).unlink()


NOT_JSON = " is not valid JSON (Unterminated string starting at at line 1): fix the file"
EVAL_CASES = [
    ("muse", "malformed split", _truncate("knowmem/forget_qa.json"), "/muse/knowmem/forget_qa.json" + NOT_JSON),
    (
        "muse",
        "missing split",
        _remove("verbmem/forget.json"),
        "/muse/verbmem/forget.json: write it as a JSON list of {prompt, gt} records, or use `unilogit muse export`",
    ),
    ("rwku", "malformed split", _truncate("forget_level1/test.json"), "/rwku/forget_level1/test.json" + NOT_JSON),
    (
        "rwku",
        "missing split",
        _remove("utility_general"),
        "/rwku/utility_general/test.json: write it as a JSON list of {question, choices, answer, examples} records",
    ),
]


@pytest.mark.parametrize(
    ("benchmark", "damage", "expected"),
    [(c[0], c[2], c[3]) for c in EVAL_CASES],
    ids=[f"{c[0]} {c[1]}" for c in EVAL_CASES],
)
def test_bad_benchmark_folder_is_one_line_and_writes_nothing(
    benchmark: str,
    damage: Callable[[Path], None],
    expected: str,
    tiny_model_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    data = _broken_copy(tmp_path, benchmark, damage)
    out = tmp_path / "eval"
    code = cli.main(["eval", benchmark, "--model", tiny_model_dir, "--data", data, "--output", str(out)])
    line = _error_line(code, capsys.readouterr().err)
    assert expected in line
    assert not out.exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """learning_rate 1e30: the first update throws the weights to ~1e30, the next forward overflows for real."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "out"
    config = base_config(
        tiny_model_dir,
        out,
        unlearn_method="ga",
        retain_dataset=None,
        learning_rate=1e30,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=1,
        save_only_model=True,
    )
    code = cli.main(["train", _write_config(tmp_path, config)])
    stderr = capsys.readouterr().err
    assert code == 1, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("unilogit: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert re.search(r"step 2: forget_loss is (nan|inf|-inf); the run stopped before that update", lines[0])
    assert f"the last good checkpoint is {out / 'checkpoint-1'}" in lines[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "model.safetensors").exists()  # the diverged weights were never saved
    weights = load_file(out / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in rows] == [1] and math.isfinite(rows[0]["forget_loss"])


def test_same_config_and_seed_give_the_same_losses_and_a_full_record(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two runs of one config (Unilogit with a KL retain term, so a reference model too) log identical steps."""
    logs = []
    for name in ("a", "b"):
        config = base_config(tiny_model_dir, tmp_path / name, max_steps=4)
        assert cli.main(["train", _write_config(tmp_path, config)]) == 0, capsys.readouterr().err[-2000:]
        rows = [json.loads(line) for line in (tmp_path / name / "trainer_log.jsonl").read_text().splitlines()]
        logs.append([(r["current_steps"], r["loss"], r["forget_loss"], r["retain_loss"]) for r in rows if "loss" in r])
    assert len(logs[0]) == 4 and logs[0] == logs[1]

    recorded = yaml.safe_load((tmp_path / "b" / "unlearn_config.yaml").read_text())
    assert recorded == config
    info = json.loads((tmp_path / "b" / "run_info.json").read_text())
    assert info["seed"] == 42
    assert all(info["versions"][name] for name in ("unilogit", "llamafactory", "transformers", "torch"))
    assert info["versions"]["llamafactory"] == "0.9.5"
    assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])


def test_git_commit_reads_a_branch_a_packed_ref_and_a_detached_head(tmp_path: Path) -> None:
    from unilogit.stage.callbacks import git_commit

    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    (tmp_path / "src").mkdir()
    assert git_commit(tmp_path / "src") == "b" * 40
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    assert git_commit(tmp_path / "src") == "a" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(tmp_path) == "c" * 40
    assert git_commit(Path("/")) is None


def test_a_crash_before_the_rename_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between writing the temporary file and renaming it: the old result stays, no stray file is left."""
    from unilogit.atomic import atomic_write_text

    path = tmp_path / "results.json"
    atomic_write_text(path, '{"old": 1}')

    def crash(src: str, dst: str) -> None:
        assert Path(src).read_text() == '{"new": ' + "2" * 100_000 + "}"  # the new text was complete
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"new": ' + "2" * 100_000 + "}")
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _step_losses(output_dir: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["current_steps"], r["loss"], r["forget_loss"], r["retain_loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_ends_like_an_uninterrupted_one(
    signum: int, tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A real signal to this process in the middle of step 3 of 6; then resume_from_checkpoint to the end."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from unilogit.errors import TrainingInterrupted

    class SignalAtStep(TrainerCallback):
        """Sends ``signum`` to this process as step 3 begins, as ``kill`` from a shell would."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signum)

    steps = {"max_steps": 6, "lr_scheduler_type": "cosine"}  # a schedule whose state the checkpoint must carry
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["train", _write_config(tmp_path, base_config(tiny_model_dir, full, **steps))]) == 0
    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as err:
        run_unlearn_from_config(base_config(tiny_model_dir, part, **steps), callbacks=[SignalAtStep()])
    checkpoint = part / "checkpoint-3"
    assert str(err.value) == (
        f"{signal.Signals(signum).name} at step 3: saved {checkpoint}; resume with resume_from_checkpoint={checkpoint}"
    )
    assert signal.getsignal(signum) is previous  # the handler is only ours while training runs
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert not (part / "model.safetensors").exists()  # no final model from a run that did not finish

    resume = base_config(
        tiny_model_dir, part, **steps, overwrite_output_dir=False, resume_from_checkpoint=str(checkpoint)
    )
    assert cli.main(["train", _write_config(tmp_path, resume)]) == 0, capsys.readouterr().err[-2000:]
    expected, resumed = _step_losses(full), _step_losses(part)
    assert [row[0] for row in resumed] == [1, 2, 3, 4, 5, 6]
    for want, got in zip(expected, resumed, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    final_full, final_part = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    for name, weight in final_full.items():
        assert final_part[name].allclose(weight, rtol=1e-6, atol=1e-7), name
