"""The Unlearning panel of LLaMA Board's Train tab and its Evaluate block: components, events, keys.

The panel's values become the ``unlearn`` keys of the run through :func:`unlearning_config`, which
checks them with the CLI's own validation (``UnlearningArguments``), so the page and ``unilogit
train`` accept and refuse exactly the same configurations. Its Max steps field is llamafactory's
``max_steps`` (:func:`max_steps_config`). Each method's knobs are built from their declarations in the
method registry (:mod:`unilogit.stage.methods`), so a registered method brings its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import gradio as gr

from unilogit.errors import ConfigError
from unilogit.stage.args import RETAIN_LOSSES, STAGE_KEYS, UnlearningArguments, split_unlearning_args
from unilogit.stage.methods import METHODS, Hyperparameter, all_hyperparameters
from unilogit.webui.evaluate import benchmarks, follow_evaluation, start_evaluation
from unilogit.webui.locales import PANEL_LOCALES, knob_texts, method_texts

if TYPE_CHECKING:
    from gradio.components import Component
    from llamafactory.webui.engine import Engine

DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(UnlearningArguments) if f.name in STAGE_KEYS}


def method_keys() -> tuple[str, ...]:
    """The knobs of every registered method, read when the panel is built (a method registered later has none)."""
    return tuple(hp.name for hp in all_hyperparameters())


def train_keys() -> tuple[str, ...]:
    """The panel has a field for every unlearning key, named as the key. Not for soft_target_kl_model, a
    diagnostic of sweeps that needs a retrained model: it is set in the YAML."""
    return tuple(key for key in STAGE_KEYS if key != "soft_target_kl_model") + method_keys()


def panel_keys() -> tuple[str, ...]:
    """The fields that Save, Load and Start read: the unlearning keys, and llamafactory's max_steps."""
    return (*train_keys(), "max_steps")


def unlearning_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``unlearn`` keys for the panel's values: the method's own knobs only, checked like the CLI's.

    Raises ``ConfigError`` with the CLI's one-line message for a bad combination or value.
    """
    method = values["unlearn_method"]
    retain = values["retain_dataset"] or []
    config: dict[str, Any] = {"unlearn_method": method}
    if retain:
        config["retain_dataset"] = retain if isinstance(retain, str) else ",".join(retain)
    config["retain_loss"] = values["retain_loss"]
    config["retain_weight"] = values["retain_weight"]
    config.update({key: values[key] for key in _own_knobs(method)})
    if values["ref_offload"]:
        config["ref_offload"] = True
    if (values.get("tokenizer_name_or_path") or "").strip():
        config["tokenizer_name_or_path"] = values["tokenizer_name_or_path"].strip()
    split_unlearning_args(dict(config))
    return config


def max_steps_config(value: Any) -> dict[str, Any]:
    """``{"max_steps": n}`` for the Max steps field, or ``{}`` when it is empty or 0 (num_train_epochs decides).

    Raises ``ConfigError`` for a negative or fractional value.
    """
    if value in (None, "", 0):
        return {}
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise ConfigError(f"max_steps: {value!r} is not a whole number >= 0; use 0 to train for num_train_epochs")
    return {"max_steps": int(value)}


def _own_knobs(method: str) -> tuple[str, ...]:
    # An unknown method (say, from an edited saved config) has none; validation then names the method.
    return tuple(hp.name for hp in METHODS[method].hyperparameters) if method in METHODS else ()


def _retain_loss_for(method: str) -> str:
    return METHODS[method].default_retain_loss if method in METHODS else "none"


def _method_fields(method: str) -> list[dict[str, Any]]:
    """Show only the knobs of the chosen method."""
    return [gr.update(visible=key in _own_knobs(method)) for key in method_keys()]


def _kw(name: str, texts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A component's English texts (Chinese and the rest come with the language switch) and its DOM id."""
    return {**(texts or PANEL_LOCALES[name]["en"]), "elem_id": "unilogit-" + name.replace("_", "-")}


def _knob(hp: Hyperparameter, visible: bool) -> Component:
    """A method's knob, the widget its declaration asks for, at its default."""
    kw = {"value": hp.default, "visible": visible, **_kw(hp.name, knob_texts(hp)["en"])}
    if hp.widget == "dropdown":
        return gr.Dropdown(choices=list(hp.choices), **kw)
    if hp.widget == "number":
        return gr.Number(precision=0 if hp.type is int else None, **kw)
    return {"checkbox": gr.Checkbox, "textbox": gr.Textbox}[hp.widget](**kw)


def create_unlearn_panel() -> tuple[Any, Any, dict[str, Component]]:
    """Build the panel and the Evaluate block (two accordions) in the current layout; return both and the
    components by name."""
    method = DEFAULTS["unlearn_method"]
    own = _own_knobs(method)
    with gr.Accordion(open=True, **_kw("unlearn_tab")) as unlearn_tab:
        with gr.Row():
            elems: dict[str, Component] = {
                "unlearn_method": gr.Dropdown(
                    choices=list(METHODS), value=method, **_kw("unlearn_method", method_texts()["en"])
                ),
                "retain_dataset": gr.Dropdown(
                    multiselect=True, allow_custom_value=True, scale=2, **_kw("retain_dataset")
                ),
                "retain_loss": gr.Dropdown(
                    choices=list(RETAIN_LOSSES), value=_retain_loss_for(method), **_kw("retain_loss")
                ),
                "retain_weight": gr.Number(value=DEFAULTS["retain_weight"], **_kw("retain_weight")),
            }
        with gr.Row():
            for hp in all_hyperparameters():
                elems[hp.name] = _knob(hp, visible=hp.name in own)
            elems["ref_offload"] = gr.Checkbox(value=DEFAULTS["ref_offload"], **_kw("ref_offload"))
            elems["max_steps"] = gr.Number(value=0, minimum=0, precision=0, **_kw("max_steps"))
            elems["tokenizer_name_or_path"] = gr.Textbox(scale=2, **_kw("tokenizer_name_or_path"))
    with gr.Accordion(open=True, **_kw("unlearn_eval_tab")) as eval_tab:
        with gr.Row():
            titles = benchmarks()
            first = next(iter(titles))
            elems["unlearn_bench"] = gr.Dropdown(choices=list(titles), value=first, **_kw("unlearn_bench"))
            elems["unlearn_eval_data"] = gr.Textbox(value=titles[first].default_data, **_kw("unlearn_eval_data"))
            elems["unlearn_eval_retrain"] = gr.Textbox(scale=2, **_kw("unlearn_eval_retrain"))
            elems["unlearn_eval_max"] = gr.Textbox(**_kw("unlearn_eval_max"))
            elems["unlearn_eval_overwrite"] = gr.Checkbox(**_kw("unlearn_eval_overwrite"))
            elems["unlearn_eval_btn"] = gr.Button(**_kw("unlearn_eval_btn"))
        elems["unlearn_eval_box"] = gr.Markdown(**_kw("unlearn_eval_box"))
    return unlearn_tab, eval_tab, elems


def bind_unlearn_panel(
    engine: Engine, blocks: tuple[Any, Any], elems: dict[str, Component], train_elems: dict[str, Component]
) -> None:
    """Wire the events of the panel and the Evaluate block (``blocks``); ``train_elems`` are LLaMA Board's own
    Train-tab components."""
    from llamafactory.extras.constants import TRAINING_STAGES
    from llamafactory.webui.common import get_save_dir
    from llamafactory.webui.control import list_datasets

    stage, method = train_elems["training_stage"], elems["unlearn_method"]
    stage.change(
        lambda s: [gr.update(visible=TRAINING_STAGES.get(s) == "unlearn")] * len(blocks),
        [stage],
        list(blocks),
        queue=False,
    )
    method.change(_method_fields, [method], [elems[key] for key in method_keys()], queue=False)
    # On user input only: a loaded config changes the method too and must keep its own retain loss.
    method.input(_retain_loss_for, [method], [elems["retain_loss"]], queue=False)
    elems["retain_dataset"].focus(
        list_datasets, [train_elems["dataset_dir"], stage], [elems["retain_dataset"]], queue=False
    )
    bench = elems["unlearn_bench"]
    bench.change(lambda b: benchmarks()[b].default_data, [bench], [elems["unlearn_eval_data"]], queue=False)

    def evaluate(
        model_name: str,
        finetuning_type: str,
        output_dir: str,
        bench_name: str,
        data: str,
        retrain: str,
        max_examples: str,
        overwrite: bool,
    ) -> Iterator[str]:
        if engine.runner.running:
            gr.Warning("A run is in progress; evaluate once it has finished.")
            yield "A run is in progress; evaluate once it has finished."
            return
        if not (model_name and output_dir):
            gr.Warning("Choose a model and the run's output dir first.")
            yield "Choose a model and the run's output dir first."
            return
        benchmark = benchmarks()[bench_name]
        model = str(get_save_dir(model_name, finetuning_type, output_dir))
        argv = benchmark.eval_argv(model, data, (retrain or "").strip() or None, max_examples or "", overwrite)
        job, already = start_evaluation(benchmark, argv, model)
        if already:
            gr.Info("This run is being evaluated already; here is its progress.")
        for text, ok in follow_evaluation(job):
            if ok is False:
                gr.Warning(text.splitlines()[0])
            yield text

    manager = engine.manager
    elems["unlearn_eval_btn"].click(
        evaluate,
        [
            manager.get_elem_by_id("top.model_name"),
            manager.get_elem_by_id("top.finetuning_type"),
            train_elems["output_dir"],
            bench,
            elems["unlearn_eval_data"],
            elems["unlearn_eval_retrain"],
            elems["unlearn_eval_max"],
            elems["unlearn_eval_overwrite"],
        ],
        [elems["unlearn_eval_box"]],
        # Another tab may follow the same evaluation while this one waits on it.
        concurrency_limit=None,
    )
