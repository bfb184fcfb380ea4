"""LLaMA Board (llamafactory's web UI) with an "Unlearning" stage, patched in at run time.

llamafactory's files are never edited. :func:`install` changes, in memory:

- ``TRAINING_STAGES`` (one dict shared by the stage dropdown, the runner and the controls): "Unlearning"
  becomes the first stage;
- ``SUPPORTED_MODELS``: the embedded default model comes first in the model picker;
- ``LOCALES``: the panel's labels and tooltips;
- the Train tab: the Unlearning panel is built inside ``create_train_tab``, so its fields reach the
  Preview, Save, Load and Start buttons, and is placed under the stage and dataset row; its Evaluate
  block goes under the run's output (below Start);
- the runner: the panel's keys join the run's arguments, they are checked like ``unilogit train``
  checks them (a refusal shown as written, see :mod:`unilogit.webui.markup`), and runs start
  ``unilogit train`` instead of ``llamafactory-cli train``;
- the run's view (:mod:`unilogit.webui.progress`): the log without repeated messages, the bar from Start
  on, and the unlearning terms in the loss plot;
- page load: a reopened page follows the running (or shows the last) evaluation;
- the Chat tab, which loads models in-process: it resolves the embedded model's alias first.

``tests/test_webui.py`` builds the whole UI, so an upstream layout change fails there loudly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EMBEDDED_MODEL = "SmolLM2-135M-Instruct-Embedded"
_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    """Patch llamafactory's web UI in memory (idempotent)."""
    if _ORIGINAL:
        return
    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()
    from llamafactory.extras.constants import DEFAULT_TEMPLATE, SUPPORTED_MODELS, TRAINING_STAGES, DownloadSource
    from llamafactory.webui import chatter, control, engine, interface, runner
    from llamafactory.webui.components import eval as eval_tab
    from llamafactory.webui.components import train as train_tab
    from llamafactory.webui.locales import LOCALES

    from unilogit.models import DEFAULT_MODEL
    from unilogit.webui.progress import loss_plot

    _put_first(TRAINING_STAGES, "Unlearning", "unlearn")
    _put_first(SUPPORTED_MODELS, EMBEDDED_MODEL, {DownloadSource.DEFAULT: DEFAULT_MODEL})
    DEFAULT_TEMPLATE[EMBEDDED_MODEL] = "smollm2"
    train_tab.DEFAULT_DATA_DIR = eval_tab.DEFAULT_DATA_DIR = default_data_dir()

    _ORIGINAL.update(
        locale_names=frozenset(LOCALES),
        create_train_tab=interface.create_train_tab,
        initialize=runner.Runner._initialize,
        parse_train_args=runner.Runner._parse_train_args,
        gen_cmd=runner.gen_cmd,
        load_model=chatter.WebChatModel.load_model,
        get_trainer_info=runner.get_trainer_info,
        resume=engine.Engine.resume,
    )
    interface.create_train_tab = _create_train_tab
    runner.Runner._initialize = _initialize
    runner.Runner._parse_train_args = _parse_train_args
    runner.gen_cmd = _gen_cmd
    runner.Popen = _popen
    runner.get_trainer_info = _trainer_info
    control.gen_loss_plot = loss_plot
    engine.Engine.resume = _resume
    chatter.WebChatModel.load_model = _load_chat_model


def create_ui() -> Any:
    """LLaMA Board's ``gr.Blocks`` with the Unlearning stage."""
    install()
    from llamafactory.webui.interface import create_ui as create

    return create()


def run_web_ui() -> None:
    """``unilogit webui``: serve LLaMA Board with the Unlearning stage (``GRADIO_SERVER_PORT`` etc. apply)."""
    install()
    from llamafactory.webui.interface import run_web_ui as run

    run()


def default_data_dir() -> str:
    """``data`` in the working folder when it has a ``dataset_info.json``, else the project's data folder."""
    from unilogit.paths import project_root

    shipped = project_root() / "data"
    if Path("data/dataset_info.json").is_file() or not (shipped / "dataset_info.json").is_file():
        return "data"
    return str(shipped)


def _put_first(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Insert ``key`` first, in place: the web UI's modules hold references to these very dicts."""
    rest = [(k, v) for k, v in mapping.items() if k != key]
    mapping.clear()
    mapping[key] = value
    mapping.update(rest)


def _create_train_tab(engine: Any) -> dict[str, Any]:
    """llamafactory's Train tab with the Unlearning panel under its stage and dataset row, and the Evaluate
    block under the run's output."""
    from unilogit.webui.panel import bind_unlearn_panel, create_unlearn_panel, panel_keys

    _add_locales()
    manager = engine.manager
    unlearn_tab, eval_tab, elems = create_unlearn_panel()
    # create_train_tab hands the set from get_base_elems() to the Preview/Save/Load/Start buttons; adding
    # our fields to it is what makes those buttons read and restore them.
    base_elems = manager.get_base_elems
    manager.get_base_elems = lambda: base_elems() | {elems[key] for key in panel_keys()}
    try:
        train_elems = _ORIGINAL["create_train_tab"](engine)
    finally:
        del manager.get_base_elems
    _place_after(unlearn_tab, train_elems["training_stage"])
    # Evaluation comes once a run has finished: after Start and the run's log and plot.
    _place_after(eval_tab, train_elems["output_box"])
    # Stable DOM ids (llamaboard-top-model-path, llamaboard-train-output-box, ...) for tests and custom CSS.
    named = {manager.get_id_by_elem(e): e for e in manager.get_elem_list()}
    for elem_id, elem in (named | {f"train.{name}": e for name, e in train_elems.items()}).items():
        elem.elem_id = elem.elem_id or "llamaboard-" + elem_id.replace(".", "-").replace("_", "-")
    _new_user_defaults(manager, train_elems)
    bind_unlearn_panel(engine, (unlearn_tab, eval_tab), elems, train_elems)
    return {**train_elems, "unlearn_tab": unlearn_tab, "unlearn_eval_tab": eval_tab, **elems}


def _add_locales() -> None:
    """Put the panel's labels and tooltips into LLaMA Board's ``LOCALES``, at every build of the UI, so that a
    method registered since the last build brings its knobs' texts."""
    from llamafactory.webui.locales import LOCALES

    from unilogit.webui.locales import complete, panel_locales

    entries = panel_locales()
    clashes = set(entries) & _ORIGINAL["locale_names"]
    if clashes:
        raise RuntimeError(f"llamafactory's LOCALES already has {sorted(clashes)}; rename the panel's components")
    LOCALES.update(complete(entries, list(LOCALES["lang"])))


def _new_user_defaults(manager: Any, train_elems: dict[str, Any]) -> None:
    """Start on the embedded model, which needs no download, and on fp32 without an accelerator (bf16 is
    slow on most CPUs). A model remembered from an earlier session still replaces it on page load."""
    from llamafactory.extras.misc import is_accelerator_available

    from unilogit.models import DEFAULT_MODEL

    manager.get_elem_by_id("top.model_name").value = EMBEDDED_MODEL
    manager.get_elem_by_id("top.model_path").value = DEFAULT_MODEL
    manager.get_elem_by_id("top.template").value = "smollm2"
    if not is_accelerator_available():
        train_elems["compute_type"].value = "fp32"


def _place_after(block: Any, inner: Any) -> None:
    """Move ``block`` right after the ancestor of ``inner`` that shares ``block``'s parent."""
    anchor = inner
    while anchor is not None and anchor.parent is not block.parent:
        anchor = anchor.parent
    if anchor is None:
        raise RuntimeError(f"llamafactory's Train tab layout changed: {inner.elem_id or inner} is not inside the tab")
    siblings = block.parent.children
    siblings.remove(block)
    siblings.insert(siblings.index(anchor) + 1, block)


def _panel_values(runner: Any, data: dict[Any, Any]) -> dict[str, Any]:
    from unilogit.webui.panel import panel_keys

    return {key: data[runner.manager.get_elem_by_id(f"train.{key}")] for key in panel_keys()}


def _is_unlearn(runner: Any, data: dict[Any, Any]) -> bool:
    from llamafactory.extras.constants import TRAINING_STAGES

    return TRAINING_STAGES.get(data[runner.manager.get_elem_by_id("train.training_stage")]) == "unlearn"


def _initialize(self: Any, data: dict[Any, Any], do_train: bool, from_preview: bool) -> str:
    """LLaMA Board's checks, then the CLI's checks of the unlearning keys; an error is shown in the page and in
    a toast, both of which render HTML, so it is escaped to read as the CLI writes it."""
    from unilogit.errors import ConfigError
    from unilogit.webui.markup import escape
    from unilogit.webui.panel import max_steps_config, unlearning_config

    error = _ORIGINAL["initialize"](self, data, do_train, from_preview)
    if error or not do_train or not _is_unlearn(self, data):
        return error
    values = _panel_values(self, data)
    try:
        unlearning_config(values)
        max_steps_config(values["max_steps"])
    except ConfigError as err:
        return escape(f"unilogit: error: {err}")
    return ""


def _parse_train_args(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
    from unilogit.webui.panel import max_steps_config, unlearning_config

    args = _ORIGINAL["parse_train_args"](self, data)
    if args["stage"] == "unlearn":
        values = _panel_values(self, data)
        args.update(unlearning_config(values))
        args.update(max_steps_config(values["max_steps"]))
    return args


def _gen_cmd(args: dict[str, Any]) -> str:
    return _ORIGINAL["gen_cmd"](args).replace("llamafactory-cli train", "unilogit train", 1)


def _popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """Start LLaMA Board's ``llamafactory-cli`` commands through our CLI, which runs ``stage: unlearn``
    itself, hands the other stages to llamafactory, and resolves the embedded model's alias."""
    from unilogit.webui.progress import run_started

    if cmd[0] == "llamafactory-cli":
        cmd = [sys.executable, "-m", "unilogit.cli", *cmd[1:]]
    if "LLAMABOARD_WORKDIR" in kwargs.get("env", {}):
        run_started(kwargs["env"]["LLAMABOARD_WORKDIR"])
    return subprocess.Popen(cmd, **kwargs)


def _trainer_info(lang: str, output_path: Any, do_train: bool) -> tuple[str, Any, dict[str, Any]]:
    from unilogit.webui.progress import trainer_info

    return trainer_info(_ORIGINAL["get_trainer_info"], lang, output_path, do_train)


def _resume(self: Any) -> Iterator[dict[Any, Any]]:
    """Page load: LLaMA Board's restore (which also re-attaches a running training), then the evaluation
    started last in this server, followed until it ends: closing the tab does not stop it."""
    from unilogit.webui.evaluate import follow_evaluation, latest_evaluation

    yield from _ORIGINAL["resume"](self)
    job = latest_evaluation()
    if job is None or self.pure_chat:
        return
    box = self.manager.get_elem_by_id("train.unlearn_eval_box")
    for text, _ in follow_evaluation(job):
        yield {box: text}


def _load_chat_model(self: Any, data: dict[Any, Any]) -> Iterator[str]:
    """The Chat tab's Load button, with the embedded model's alias resolved (converted once) like the CLI does."""
    from unilogit.models import resolve_model

    path = self.manager.get_elem_by_id("top.model_path")
    yield from _ORIGINAL["load_model"](self, {**data, path: resolve_model(data[path] or "")})
