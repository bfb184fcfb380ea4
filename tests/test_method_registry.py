"""A method is one registry entry: a toy method registered here trains through the CLI, is checked by the
CLI's rules, shows its knob in the web panel and its row in the help and the docs table."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import ROOT, base_config
from unilogit import cli, losses
from unilogit.stage.args import UnlearningArguments, unlearning_key_help
from unilogit.stage.methods import METHODS, Hyperparameter, Method, hyperparameter_table, register

SEEN_SCALES: list[float] = []  # the toy_scale each forget step used: the value the trainer handed the loss


def toy_loss(logits: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Gradient ascent on the forget NLL, scaled: the toy method's own loss."""
    return -scale * losses.nll_loss(logits, labels)


def _toy_term(
    logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None, args: UnlearningArguments
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    SEEN_SCALES.append(args.toy_scale)
    return toy_loss(logits, labels, args.toy_scale), {"toy_seen_scale": torch.tensor(args.toy_scale)}


TOY_SCALE = Hyperparameter(
    "toy_scale",
    float,
    1.0,
    label="Toy scale",
    label_zh="玩具系数",
    help="How strongly the toy method ascends the forget NLL",
    help_zh="玩具方法在遗忘集负对数似然上梯度上升的强度",
    low=0.0,
    strict=True,
)
TOY = Method(
    name="toy",
    forget_term=_toy_term,
    reduction="token",
    default_retain_loss="nll",
    hyperparameters=(TOY_SCALE,),
    needs_forget_reference=lambda args: False,
    summary="scaled gradient ascent, the registry's test method",
    summary_zh="按系数缩放的梯度上升，注册表的测试方法",
    logged=("toy_seen_scale",),
)


@pytest.fixture
def toy() -> Any:
    """The toy method, registered for one test."""
    register(TOY)
    SEEN_SCALES.clear()
    yield TOY
    del METHODS["toy"]


def _train(capsys: pytest.CaptureFixture, config: dict[str, Any], tmp_path: Path, *overrides: str) -> tuple[int, str]:
    """``unilogit train`` on ``config`` in this process (a subprocess would not see the registration)."""
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    code = cli.main(["train", str(path), *overrides])
    return code, capsys.readouterr().err


def test_a_registered_method_trains_through_the_cli(
    toy: Method, tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = base_config(tiny_model_dir, tmp_path / "out", unlearn_method="toy")
    code, stderr = _train(capsys, config, tmp_path, "toy_scale=0.25")
    assert code == 0, stderr[-2000:]
    assert SEEN_SCALES == [0.25] * 3  # max_steps 3: each step's loss got the value given on the command line
    rows = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 3 and all(row["forget_loss"] < 0 and "retain_loss" in row for row in steps)
    assert [row["toy_seen_scale"] for row in steps] == [0.25] * 3  # the term it declares in logged, in the log
    assert yaml.safe_load((tmp_path / "out" / "unlearn_config.yaml").read_text())["toy_scale"] == 0.25

    # Its key is checked by its declaration, and a near miss of it is named, like a built-in method's.
    for override, message in (
        ("toy_scale=0", "toy_scale: 0 is out of range; use a finite number > 0"),
        ("toy_scale=abc", "toy_scale: 'abc' is not a number; use e.g. toy_scale=0.5"),
        ("toy_scal=2", "unknown config key 'toy_scal'; did you mean 'toy_scale'?"),
    ):
        code, stderr = _train(capsys, {**config, "output_dir": str(tmp_path / "refused")}, tmp_path, override)
        assert code == 2 and "Traceback" not in stderr
        assert [line for line in stderr.splitlines() if line.startswith("unilogit: error:")] == [
            f"unilogit: error: {message}"
        ]
    assert not (tmp_path / "refused").exists()


def test_a_registered_method_has_its_knob_in_the_web_panel(toy: Method, tmp_path: Path) -> None:
    from llamafactory.webui.locales import LOCALES

    from unilogit.webui import create_ui
    from unilogit.webui.panel import _method_fields, method_keys, unlearning_config

    cwd = os.getcwd()
    os.chdir(tmp_path)  # LLaMA Board writes llamaboard_cache/ into the working folder
    try:
        demo = create_ui()
    finally:
        os.chdir(cwd)
    manager = next(fn for fn in demo.fns.values() if fn.name == "run_train").fn.__self__.manager
    assert "toy" in [value for _, value in manager.get_elem_by_id("train.unlearn_method").choices]
    knob = manager.get_elem_by_id("train.toy_scale")
    assert (knob.label, knob.value, knob.visible) == ("Toy scale", 1.0, False)  # unilogit is the default method
    assert knob.info == "How strongly the toy method ascends the forget NLL (> 0)."
    # The method list's tooltip names it with its summary, in both languages.
    assert LOCALES["unlearn_method"]["en"]["info"].endswith(
        "; toy (scaled gradient ascent, the registry's test method)."
    )
    assert LOCALES["unlearn_method"]["zh"]["info"].endswith("；toy（按系数缩放的梯度上升，注册表的测试方法）。")
    assert manager.get_elem_by_id("train.unlearn_method").info == LOCALES["unlearn_method"]["en"]["info"]
    assert LOCALES["toy_scale"]["zh"] == {
        "label": "玩具系数",
        "info": "玩具方法在遗忘集负对数似然上梯度上升的强度（> 0）。",
    }
    # Choosing the method shows its knob alone; the run's keys carry it, checked by the CLI's rules.
    shown = {key for key, update in zip(method_keys(), _method_fields("toy"), strict=True) if update["visible"]}
    assert shown == {"toy_scale"}
    values = {"unlearn_method": "toy", "retain_dataset": [], "retain_loss": "none", "retain_weight": 1.0}
    values |= {"ref_offload": False, "toy_scale": 0.5, "npo_beta": 0.1}
    assert unlearning_config(values) == {
        "unlearn_method": "toy",
        "retain_loss": "none",
        "retain_weight": 1.0,
        "toy_scale": 0.5,
    }


def test_a_registered_method_is_in_the_help_and_the_table(toy: Method) -> None:
    assert ("toy_scale", "toy: How strongly the toy method ascends the forget NLL; a number > 0 (default 1.0)") in (
        unlearning_key_help()
    )
    assert dict(unlearning_key_help())["unlearn_method"].endswith("ga | npo | simnpo | undial | unilogit | toy.")
    assert hyperparameter_table().splitlines()[-1] == (
        "| `toy_scale` | toy | a number > 0 (default 1.0) | How strongly the toy method ascends the forget NLL |"
    )


def test_docs_table_is_the_registry_table() -> None:
    """docs/CONFIGURATION.md shows hyperparameter_table() between its markers; regenerate it when this fails."""
    text = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    match = re.search(r"<!-- method-hyperparameters:start -->\n(.*?)<!-- method-hyperparameters:end -->", text, re.S)
    assert match, "docs/CONFIGURATION.md lost its method-hyperparameters markers"
    assert match.group(1) == hyperparameter_table()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "npo"}, "a method named 'npo' is registered already"),
        ({"hyperparameters": (Hyperparameter("npo_beta", float, 1.0, "", "", "", ""),)}, "the key 'npo_beta' is taken"),
        ({"hyperparameters": (Hyperparameter("retain_weight", float, 1.0, "", "", "", ""),)}, "is taken"),
        ({"hyperparameters": (Hyperparameter("toy_scale", float, -1.0, "", "", "", "", low=0.0),)}, "out of range"),
        ({"hyperparameters": (Hyperparameter("toy_scale", str, "a", "", "", "", ""),)}, "a str shown as a number"),
    ],
)
def test_register_refuses_a_clash_or_a_bad_declaration(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        register(dataclasses.replace(TOY, **change))
    assert "toy" not in METHODS


def test_a_forget_term_that_logs_an_undeclared_scalar_is_refused(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A scalar the trainer would log but trainer_log.jsonl would drop: refused at the first step, not lost."""
    register(dataclasses.replace(TOY, logged=()))
    try:
        with pytest.raises(ValueError, match=re.escape("toy: its forget term returned ['toy_seen_scale']; declare")):
            _train(capsys, base_config(tiny_model_dir, tmp_path / "out", unlearn_method="toy"), tmp_path)
    finally:
        del METHODS["toy"]


def test_the_stage_reserves_its_keys_in_the_registry() -> None:
    """The registry imports nothing of the stage's arguments; they reserve their keys in it when imported, and a
    method registered before that with one of them is refused then."""
    from unilogit.stage.args import STAGE_KEYS
    from unilogit.stage.methods import reserve_keys

    clash = dataclasses.replace(TOY, hyperparameters=(dataclasses.replace(TOY_SCALE, name="toy_key"),))
    register(clash)
    try:
        with pytest.raises(ValueError, match="the key 'toy_key' of a registered method is the stage's own"):
            reserve_keys(("toy_key",))
    finally:
        del METHODS["toy"]
    reserve_keys(STAGE_KEYS)  # no registered method uses them
