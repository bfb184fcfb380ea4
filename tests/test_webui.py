"""LLaMA Board with the Unlearning stage, built in-process without a browser.

Building the real UI here makes an upstream layout change (a renamed component, a moved row, a
button that no longer reads the base elements) fail loudly. The browser test is test_webui_browser.py.
"""

from __future__ import annotations

import html
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from unilogit.errors import ConfigError
from unilogit.webui.panel import max_steps_config, panel_keys, train_keys, unlearning_config


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The built Blocks, its runner, and each button's event by handler name."""
    from unilogit.webui import create_ui

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("board"))  # LLaMA Board writes llamaboard_cache/ into the working folder
    try:
        demo = create_ui()
    finally:
        os.chdir(cwd)
    events = {fn.name: fn for fn in demo.fns.values() if fn.name}
    runner = events["run_train"].fn.__self__
    return {"demo": demo, "events": events, "runner": runner, "manager": runner.manager}


def _data(ui: dict[str, Any], **train: Any) -> dict[Any, Any]:
    """The Start button's inputs at their initial values, with ``train.<key>`` values replaced."""
    manager = ui["manager"]
    data = {elem: elem.value for elem in ui["events"]["run_train"].inputs}
    data[manager.get_elem_by_id("top.lang")] = "en"
    data[manager.get_elem_by_id("top.finetuning_type")] = "full"
    data[manager.get_elem_by_id("train.dataset")] = ["example_forget"]
    data[manager.get_elem_by_id("train.output_dir")] = "run"  # the page fills these in on load
    data[manager.get_elem_by_id("train.config_path")] = "run.yaml"
    for key, value in train.items():
        data[manager.get_elem_by_id(f"train.{key}")] = value
    return data


def _preview(ui: dict[str, Any], **train: Any) -> str:
    """The output box's text after Preview, as the page shows it (character references decoded)."""
    with warnings.catch_warnings():  # gr.Warning outside a page request is a Python warning
        warnings.simplefilter("ignore")
        (out,) = list(ui["runner"].preview_train(_data(ui, **train)))
    return html.unescape(out[ui["manager"].get_elem_by_id("train.output_box")])


def test_stage_list_panel_place_and_models(ui: dict[str, Any]) -> None:
    from llamafactory.extras.constants import SUPPORTED_MODELS

    manager = ui["manager"]
    stage = manager.get_elem_by_id("train.training_stage")
    assert stage.choices[0] == ("Unlearning", "Unlearning") and stage.value == "Unlearning"
    assert ("Supervised Fine-Tuning", "Supervised Fine-Tuning") in stage.choices
    # The panel sits right under the row of the stage and dataset pickers, in the Train tab.
    panel = manager.get_elem_by_id("train.unlearn_tab")
    siblings = panel.parent.children
    row = stage
    while row.parent is not panel.parent:
        row = row.parent
    assert siblings.index(panel) == siblings.index(row) + 1
    # The Evaluate block comes after Start, and after the run's log and loss plot.
    evaluate = manager.get_elem_by_id("train.unlearn_eval_tab")
    start, output = manager.get_elem_by_id("train.start_btn"), manager.get_elem_by_id("train.output_box")
    assert evaluate.parent is panel.parent
    assert siblings.index(evaluate) == siblings.index(_row_in(output, evaluate.parent)) + 1
    assert siblings.index(_row_in(start, evaluate.parent)) < siblings.index(evaluate)
    assert manager.get_elem_by_id("train.max_steps").value == 0
    # The embedded model is the first and default model; its path is the alias our CLI converts.
    model_name = manager.get_elem_by_id("top.model_name")
    assert model_name.choices[0][0] == model_name.value == "SmolLM2-135M-Instruct-Embedded"
    assert next(iter(SUPPORTED_MODELS)) == model_name.value
    assert manager.get_elem_by_id("top.model_path").value == "smollm2-135m-instruct"
    # Only the chosen method's own knobs are shown (unilogit by default).
    shown = {key for key in train_keys() if manager.get_elem_by_id(f"train.{key}").visible}
    assert {"unilogit_target", "unilogit_divergence", "retain_weight"} <= shown
    assert not shown & {"npo_beta", "simnpo_beta", "simnpo_delta", "undial_gamma"}


def _row_in(elem: Any, parent: Any) -> Any:
    """The ancestor of ``elem`` (or itself) whose parent is ``parent``."""
    while elem.parent is not parent:
        elem = elem.parent
    return elem


def test_buttons_read_and_restore_the_panel(ui: dict[str, Any]) -> None:
    manager, events = ui["manager"], ui["events"]
    panel = {manager.get_elem_by_id(f"train.{key}") for key in panel_keys()}
    assert manager.get_elem_by_id("train.max_steps") in panel
    for name in ("preview_train", "run_train", "save_args"):
        assert panel <= set(events[name].inputs), f"{name} does not read the Unlearning panel"
    assert panel <= set(events["load_args"].outputs) and panel <= set(events["check_output_dir"].outputs)


def test_every_language_has_every_label(ui: dict[str, Any]) -> None:
    from llamafactory.webui.locales import LOCALES

    from unilogit.webui.locales import panel_locales

    languages = set(LOCALES["lang"])
    for name, texts in panel_locales().items():
        assert set(LOCALES[name]) == languages
        assert texts["zh"] != texts["en"], f"{name} has no Chinese text"
    # The language switch rebuilds every labelled component; ours come back in Chinese.
    engine = ui["events"]["change_lang"].fn.__self__
    updates = engine.change_lang("zh")
    assert updates[ui["manager"].get_elem_by_id("train.unlearn_method")].label == "遗忘方法"
    assert updates[ui["manager"].get_elem_by_id("train.unlearn_tab")].label.startswith("遗忘学习")
    assert updates[ui["manager"].get_elem_by_id("train.unilogit_target")].label == "Unilogit 目标来源"


def test_preview_shows_our_cli_and_keys(ui: dict[str, Any]) -> None:
    text = _preview(
        ui, unlearn_method="npo", retain_dataset=["example_retain"], retain_loss="nll", retain_weight=0.5, npo_beta=0.2
    )
    assert "unilogit train" in text and "llamafactory-cli" not in text
    for line in ("--stage unlearn", "--unlearn_method npo", "--retain_dataset example_retain", "--retain_loss nll"):
        assert line in text
    assert "--retain_weight 0.5" in text and "--npo_beta 0.2" in text
    # Another method's knobs stay out of the command, and so does Max steps at 0 (the epochs decide).
    assert "simnpo_beta" not in text and "unilogit_target" not in text and "max_steps" not in text
    with_max = _preview(ui, unlearn_method="ga", retain_loss="none", max_steps=7, tokenizer_name_or_path=" tok/dir ")
    assert "--max_steps 7" in with_max and "--tokenizer_name_or_path tok/dir" in with_max
    other_stage = _preview(ui, training_stage="Supervised Fine-Tuning")
    assert "--stage sft" in other_stage and "unlearn_method" not in other_stage


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"unlearn_method": "unilogit", "retain_loss": "kl"},
            "retain_loss: kl needs a retain set; set retain_dataset: <name in dataset_info.json>, or retain_loss: none",
        ),
        ({"unlearn_method": "npo", "retain_loss": "none", "npo_beta": -1.0}, "npo_beta: -1.0 is out of range"),
        ({"unlearn_method": "ga", "retain_loss": "none", "retain_weight": None}, "retain_weight: None is not a number"),
        (
            {"unlearn_method": "ga", "retain_loss": "none", "max_steps": -2},
            "max_steps: -2 is not a whole number >= 0; use 0 to train for num_train_epochs",
        ),
    ],
)
def test_bad_input_is_a_message_and_starts_nothing(ui: dict[str, Any], train: dict[str, Any], message: str) -> None:
    """The page and the toast render HTML: the message arrives escaped and reads whole, <...> included."""
    assert message in _preview(ui, **train)
    runner = ui["runner"]
    with pytest.warns(UserWarning) as toasts:
        outputs = list(runner.run_train(_data(ui, **train)))
    box = outputs[-1][ui["manager"].get_elem_by_id("train.output_box")]
    assert "<" not in box and html.unescape(box).startswith(f"unilogit: error: {message}")
    assert any(html.unescape(str(toast.message)) == html.unescape(box) for toast in toasts)
    assert runner.trainer is None and not runner.running


def test_escape_keeps_every_character_visible() -> None:
    from unilogit.webui.markup import escape

    text = "set retain_dataset: <name in dataset_info.json> & *not* `code` [link] | ~x~ #1 \\"
    escaped = escape(text)
    assert html.unescape(escaped) == text
    assert not set(escaped) & set("<>*`[]|~\\_")


def test_max_steps_config() -> None:
    assert max_steps_config(0) == max_steps_config(None) == {}
    assert max_steps_config(12.0) == {"max_steps": 12}
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ConfigError, match="^max_steps: "):
            max_steps_config(bad)


def test_save_and_load_round_trip(ui: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    manager, runner = ui["manager"], ui["runner"]
    chosen = {
        "unlearn_method": "simnpo",
        "retain_dataset": ["example_retain"],
        "retain_loss": "nll",
        "retain_weight": 0.25,
        "simnpo_beta": 3.0,
        "simnpo_delta": 0.5,
        "config_path": "round.yaml",
    }
    runner.save_args(_data(ui, **chosen))
    saved = yaml.safe_load((tmp_path / "llamaboard_config" / "round.yaml").read_text())
    assert saved["train.simnpo_delta"] == 0.5 and saved["train.training_stage"] == "Unlearning"
    loaded = {manager.get_id_by_elem(elem): value for elem, value in runner.load_args("en", "round.yaml").items()}
    for key, value in chosen.items():
        if key != "config_path":
            assert loaded[f"train.{key}"] == value


def test_unlearning_config_uses_the_cli_rules() -> None:
    values = {
        "unlearn_method": "undial",
        "retain_dataset": ["a", "b"],
        "retain_loss": "nll",
        "retain_weight": 1.0,
        "npo_beta": -5.0,  # not undial's knob: neither emitted nor checked
        "undial_gamma": 3.0,
        "ref_offload": False,  # the default: left out of the run's keys
    }
    assert unlearning_config(values) == {
        "unlearn_method": "undial",
        "retain_dataset": "a,b",
        "retain_loss": "nll",
        "retain_weight": 1.0,
        "undial_gamma": 3.0,
    }
    assert unlearning_config({**values, "ref_offload": True})["ref_offload"] is True
    with pytest.raises(ConfigError, match="unlearn_method: 'nope' is not valid"):
        unlearning_config({**values, "unlearn_method": "nope"})
    with pytest.raises(ConfigError, match="undial_gamma: -1.0 is out of range"):
        unlearning_config({**values, "undial_gamma": -1.0})


def test_evaluate_benchmark_command_and_error(tmp_path: Path) -> None:
    from unilogit.webui.evaluate import benchmarks, follow_evaluation, start_evaluation

    muse = benchmarks()["MUSE"]
    argv = muse.eval_argv("saves/run", "", "saves/retrain", " 2", overwrite=True)
    assert argv == [
        "eval", "muse", "--model", "saves/run", "--data", "data/muse_mini",
        "--retrain", "saves/retrain", "--max-examples", "2", "--overwrite",
    ]  # fmt: skip
    missing = str(tmp_path / "no-run")
    job, already = start_evaluation(muse, muse.eval_argv(missing, "", None, "0", overwrite=False), missing)
    *_, (text, ok) = follow_evaluation(job, every_s=0.2)
    assert not already and ok is False and job.code == 2
    first = html.unescape(text.splitlines()[0])
    assert first.startswith("unilogit: error: unilogit eval muse: argument --max-examples")


def test_evaluation_progress_per_split() -> None:
    """tqdm's bars become one row per split with its count and elapsed time; a new bar ends the one before."""
    from unilogit.webui.evaluate import Progress

    progress = Progress()
    progress.take("Loading model saves/run", 101.0)
    progress.take("VerbMem:   0%|          | 0/4 [00:00<?, ?it/s]", 102.0)
    progress.take("VerbMem:  50%|█████     | 2/4 [00:40<00:40, 20.0s/it]", 142.0)
    progress.take("KnowMem_f:   0%|          | 0/3 [00:00<?, ?it/s]", 170.0)
    verbmem, knowmem = progress.splits["VerbMem"], progress.splits["KnowMem_f"]
    assert (verbmem.done, verbmem.elapsed(1e9)) == (4, 68.0)
    assert (knowmem.done, knowmem.total, knowmem.elapsed(180.0)) == (0, 3, 10.0)
    assert list(progress.tail) == ["Loading model saves/run"]
    assert progress.table(190.0).splitlines()[2:] == [
        "| VerbMem | 4/4 (100%) | 0:01:08 |",
        "| KnowMem&#95;f | 0/3 (0%) | 0:00:20 |",
    ]
    progress.finish(200.0, ok=True)
    assert (knowmem.done, knowmem.elapsed(1e9)) == (3, 30.0)


def test_evaluation_outlives_its_page(tiny_model_dir: str, tmp_path: Path) -> None:
    """RWKU on a run folder: the page that started it goes away after its first view (a closed tab); the
    evaluation goes on, a second Evaluate finds it running, and a reopened page gets its table."""
    import shutil

    from unilogit.webui.evaluate import benchmarks, follow_evaluation, latest_evaluation, start_evaluation

    rwku = benchmarks()["RWKU"]
    fixtures = str(Path(__file__).parent / "fixtures" / "rwku")
    assert rwku.eval_argv("saves/run", fixtures, "saves/retrain", "", overwrite=False) == [
        "eval", "rwku", "--model", "saves/run", "--data", fixtures,
    ]  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    job, already = start_evaluation(rwku, rwku.eval_argv(str(run), fixtures, None, "1", overwrite=False), str(run))
    page = follow_evaluation(job)
    text, ok = next(page)
    assert not already and ok is None and "RWKU" in text and "0:00:0" in text
    page.close()
    assert start_evaluation(rwku, [], str(run)) == (job, True)
    assert job.wait(300) == 0, job.view()[0]
    assert latest_evaluation() is job
    (text, ok), *rest = follow_evaluation(job)
    assert ok is True and not rest and "forget All" in text and "| run |" in text
    splits = job.progress.splits
    assert {"MMLU", "TruthfulQA"} <= set(splits) and all(s.done == s.total for s in splits.values())


def test_reopened_page_shows_the_last_evaluation(ui: dict[str, Any], tmp_path: Path) -> None:
    from unilogit.webui.evaluate import benchmarks, start_evaluation

    missing = str(tmp_path / "no-run")
    job, _ = start_evaluation(
        benchmarks()["MUSE"], ["eval", "muse", "--model", missing, "--max-examples", "0"], missing
    )
    job.wait(120)
    (resume,) = [fn for fn in ui["demo"].fns.values() if fn.name == "_resume"]
    *_, last = resume.fn()
    box = ui["manager"].get_elem_by_id("train.unlearn_eval_box")
    assert html.unescape(last[box]).startswith("unilogit: error: unilogit eval muse: argument --max-examples")


def test_run_view_log_progress_and_plot(tmp_path: Path) -> None:
    """The Train tab's view of a run: each repeated log message once, the bar from Start on (before any
    step is logged), and forget_loss and retain_loss in the loss plot."""
    import gradio as gr

    from unilogit.webui.progress import loss_plot, run_started, trainer_info

    config = '[INFO|configuration_utils.py:1] 2026-01-01 >> Model config LlamaConfig {\n  "a": 1\n}\n'
    (tmp_path / "running_log.txt").write_text(
        config * 6 + "[INFO|2026-01-01 00:00:01] loader.py:2 >> Loading dataset forget.json...\n"
    )
    run_started(str(tmp_path))

    def empty(*args: Any) -> tuple[str, Any, dict[str, Any]]:
        return "", gr.Slider(visible=False), {}

    log, bar, _ = trainer_info(empty, "en", tmp_path, True)
    assert log.count("Model config") == 1 and log.count('"a": 1') == 1 and "Loading dataset" in log
    assert (
        bar.visible
        and bar.label.startswith("Preparing 0:00:0")
        and bar.label.endswith("Loading dataset forget.json...")
    )
    (tmp_path / "trainer_log.jsonl").write_text('{"current_steps": 1, "loss": 2.0}\n')
    assert not trainer_info(empty, "en", tmp_path, True)[1].visible  # LLaMA Board's own bar takes over
    rows = [{"current_steps": i, "loss": 3.0 - i, "forget_loss": 1.0 - i, "retain_loss": 2.0} for i in (1, 2, 3)]
    legend = [text.get_text() for text in loss_plot([*rows, {"current_steps": 3}]).axes[0].get_legend().get_texts()]
    assert legend == ["loss", "forget_loss", "retain_loss"]


def test_chat_tab_loads_the_embedded_model_alias(
    ui: dict[str, Any], tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Chat tab loads in-process; the alias resolves through the cache, as in ``unilogit train``."""
    from unilogit.models import CONVERSION_VERSION

    # A converted model in a fresh cache: the tiny model stands in for the 135M one.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"smollm2-135m-instruct-v{CONVERSION_VERSION}").symlink_to(tiny_model_dir)
    monkeypatch.setenv("UNILOGIT_CACHE", str(tmp_path))
    manager = ui["manager"]
    button = manager.get_elem_by_id("infer.load_btn")
    (load,) = [fn for fn in ui["demo"].fns.values() if (button._id, "click") in fn.targets]
    chatter = load.fn.__self__
    data = {elem: elem.value for elem in load.inputs}
    data[manager.get_elem_by_id("top.lang")] = "en"
    assert data[manager.get_elem_by_id("top.model_path")] == "smollm2-135m-instruct"
    try:
        assert list(chatter.load_model(data))[-1] == "Model loaded, now you can chat with your model!"
        assert Path(chatter.engine.model.name_or_path).resolve() == Path(tiny_model_dir).resolve()
    finally:
        list(chatter.unload_model(data))
