"""Labels and tooltips of the Unlearning panel, in LLaMA Board's ``LOCALES`` format.

LLaMA Board looks every component up by its short name in one ``LOCALES`` dict when the language
changes, and every entry must cover every language of its language picker. We write English and
Chinese; :func:`complete` fills the other languages with the English text. The method list's tooltip and the
texts of a method's knobs come from the method registry (:func:`method_texts`, :func:`knob_texts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unilogit.stage.methods import Hyperparameter

PANEL_LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "unlearn_tab": {
        "en": {"label": "Unlearning"},
        "zh": {"label": "遗忘学习（Unlearning）参数设置"},
    },
    "retain_dataset": {
        "en": {
            "label": "Retain dataset",
            "info": "Data whose knowledge must be kept; each forget example is paired with a retain example.",
        },
        "zh": {
            "label": "保留数据集",
            "info": "需要保留其知识的数据；每个遗忘样本与一个保留样本配对。",
        },
    },
    "retain_loss": {
        "en": {
            "label": "Retain loss",
            "info": "Regularizer on the retain set: nll (its likelihood), kl (stay close to the initial model) "
            "or none.",
        },
        "zh": {
            "label": "保留损失",
            "info": "保留集上的正则项：nll（负对数似然）、kl（与初始模型保持接近）或 none（不使用）。",
        },
    },
    "retain_weight": {
        "en": {"label": "Retain weight λ", "info": "Weight of the retain term: loss = forget + λ · retain (λ ≥ 0)."},
        "zh": {"label": "保留权重 λ", "info": "保留项的权重：损失 = 遗忘项 + λ · 保留项（λ ≥ 0）。"},
    },
    "ref_offload": {
        "en": {
            "label": "Offload the reference",
            "info": "Full/freeze tuning without DeepSpeed: keep the frozen reference on the CPU between its forwards.",
        },
        "zh": {
            "label": "参考模型卸载到 CPU",
            "info": "全参/冻结微调且不使用 DeepSpeed 时：冻结的参考模型在两次前向之间留在 CPU 上。",
        },
    },
    "max_steps": {
        "en": {
            "label": "Max steps",
            "info": "Stop after this many optimizer steps (overrides the epochs); 0: train for the epochs set above.",
        },
        "zh": {"label": "最大步数", "info": "训练到该优化步数即停止（优先于训练轮数）；0 表示按上方设置的轮数训练。"},
    },
    "tokenizer_name_or_path": {
        "en": {
            "label": "Tokenizer (optional)",
            "info": "For a model folder that ships no tokenizer: its tokenizer's folder or hub id. The run's output "
            "folder then carries it.",
        },
        "zh": {
            "label": "分词器（可选）",
            "info": "模型目录不含分词器时：分词器的目录或 Hub ID。训练输出目录随后会带上该分词器。",
        },
    },
    "unlearn_eval_tab": {
        "en": {"label": "Evaluate the run"},
        "zh": {"label": "评测本次训练"},
    },
    "unlearn_bench": {
        "en": {"label": "Benchmark", "info": "The evaluator to run on this run's output folder."},
        "zh": {"label": "评测基准", "info": "在本次训练的输出目录上运行的评测。"},
    },
    "unlearn_eval_data": {
        "en": {
            "label": "Benchmark data",
            "info": "The benchmark's data folder (the embedded mini benchmark by default).",
        },
        "zh": {"label": "评测数据", "info": "评测数据目录（默认为内置的迷你基准）。"},
    },
    "unlearn_eval_retrain": {
        "en": {
            "label": "Retrained model (optional)",
            "info": "A model trained without the forget set: PrivLeak's reference and the KL to retrain.",
        },
        "zh": {
            "label": "重训练模型（可选）",
            "info": "未见过遗忘集训练的模型：作为 PrivLeak 的参考并计算与其的 KL。",
        },
    },
    "unlearn_eval_max": {
        "en": {"label": "Max examples", "info": "Cap every split at this many examples for a quick check; empty: all."},
        "zh": {"label": "最大样本数", "info": "每个划分最多评测的样本数，用于快速检查；留空表示全部。"},
    },
    "unlearn_eval_overwrite": {
        "en": {"label": "Overwrite results", "info": "Replace earlier results of this run."},
        "zh": {"label": "覆盖结果", "info": "替换本次训练已有的评测结果。"},
    },
    "unlearn_eval_btn": {
        "en": {"value": "Evaluate"},
        "zh": {"value": "开始评测"},
    },
    "unlearn_eval_box": {
        "en": {
            "value": "Evaluate the finished run's output folder on the chosen benchmark. The evaluation goes on "
            "when this page is closed; reopen it to see the progress."
        },
        "zh": {"value": "在所选基准上评测已完成训练的输出目录。关闭页面后评测仍会继续；重新打开页面即可查看进度。"},
    },
}


def complete(entries: dict[str, dict[str, dict[str, Any]]], languages: list[str]) -> dict[str, dict[str, Any]]:
    """Give every entry every language in ``languages``, falling back to its English text."""
    return {name: {lang: texts.get(lang, texts["en"]) for lang in languages} for name, texts in entries.items()}


def method_texts() -> dict[str, dict[str, str]]:
    """The label and tooltip of the method list, in English and Chinese: every registered method with its summary."""
    from unilogit.stage.methods import METHODS

    en = "; ".join(f"{m.name} ({m.summary})" for m in METHODS.values())
    zh = "；".join(f"{m.name}（{m.summary_zh or m.summary}）" for m in METHODS.values())
    return {
        "en": {"label": "Unlearning method", "info": f"The forget objective: {en}."},
        "zh": {"label": "遗忘方法", "info": f"遗忘目标函数：{zh}。"},
    }


def knob_texts(hp: Hyperparameter) -> dict[str, dict[str, str]]:
    """The label and tooltip of a method's knob, in English and Chinese, from its declaration."""
    return {"en": {"label": hp.label, "info": hp.info("en")}, "zh": {"label": hp.label_zh, "info": hp.info("zh")}}


def panel_locales() -> dict[str, dict[str, dict[str, str]]]:
    """Every entry of the panel: :data:`PANEL_LOCALES`, the method list and the knobs of every registered method."""
    from unilogit.stage.methods import all_hyperparameters

    return (
        PANEL_LOCALES | {"unlearn_method": method_texts()} | {hp.name: knob_texts(hp) for hp in all_hyperparameters()}
    )
