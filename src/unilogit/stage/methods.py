"""The method registry: name → forget term, default retain term, hyperparameters.

A method is one :class:`Method` entry in :data:`METHODS` (added with :func:`register`), beside its
loss in :mod:`unilogit.losses`. Its hyperparameters are declared here, each as a
:class:`Hyperparameter` (name, type, default, bound or choices, help in English and Chinese, widget);
the config checks (:meth:`Hyperparameter.check`, which :mod:`unilogit.stage.args` applies), the web panel's
knobs and its method list, ``unilogit train --help``, the log's terms and the table in ``docs/CONFIGURATION.md``
(:func:`hyperparameter_table`) are all derived from it. This module imports nothing of the stage: the
arguments import the registry, and tell it their own keys (:func:`reserve_keys`).

A forget term maps the current logits, the labels, what it needs of the reference model (``None``
when it needs no reference) and the arguments to ``(loss, extra scalars to log)``; it reads its
hyperparameters as attributes of the arguments (``args.npo_beta``). What it needs is
``reference_statistic``: ``"rows"``, the reference logits at the supervised positions ``[N, V]``
(distillation terms), or ``"sequence_nll"``, one reference NLL per sequence ``[B]`` (NPO); the
trainer computes it under ``no_grad`` and drops the reference logits at once. ``reduction`` says how
the term averages ("token" or "sequence"), which the trainer needs to weight micro-batches under
gradient accumulation so that 2 micro-batches × 2 steps equal one batch of 4. ``soft_target``, for
the distillation methods (UnDIAL, Unilogit), builds the forget term's target distribution; the trainer
compares it with a retrained model's (``soft_target_kl_model``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from unilogit import losses
from unilogit.config import check_choice, check_number, show
from unilogit.errors import ConfigError

if TYPE_CHECKING:
    from unilogit.stage.args import UnlearningArguments

ForgetTerm = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None", "UnlearningArguments"],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]


ReferenceStatistic = Literal["rows", "sequence_nll"]

# (rows, labels, args) -> log p̃ [N, V] in fp32: the forget term's soft target at the supervised positions,
# built from ``rows`` [N, V], the logits its target comes from (the reference's when the method needs a
# forget reference, the model's own otherwise).
SoftTarget = Callable[[torch.Tensor, torch.Tensor, "UnlearningArguments"], torch.Tensor]


Widget = Literal["number", "dropdown", "checkbox", "textbox"]


@dataclass(frozen=True)
class Hyperparameter:
    """One config key of a method: its type, default and allowed values, its help, and its web panel field.

    ``help`` and ``help_zh`` say what the key does without its bound or default, which are added where
    they are shown (``--help``, the panel's tooltip, the docs table).
    """

    name: str
    type: type
    default: Any
    label: str
    label_zh: str
    help: str
    help_zh: str
    low: float | None = None  # numbers: the lower bound
    strict: bool = False  # numbers: the bound excludes ``low`` (> rather than >=)
    choices: tuple[str, ...] = ()  # strings: the allowed values
    widget: Widget = "number"

    @property
    def bound(self) -> str:
        """A number's bound as the help shows it (``> 0``, ``≥ 0``), or ``""``."""
        return "" if self.low is None else f"{'>' if self.strict else '≥'} {self.low:g}"

    def info(self, lang: str) -> str:
        """The panel's tooltip in ``lang`` ("en", or "zh" for Chinese): the help with the bound."""
        if lang == "zh":
            return f"{self.help_zh}（{self.bound}）。" if self.bound else f"{self.help_zh}。"
        return f"{self.help} ({self.bound})." if self.bound else f"{self.help}."

    def values(self) -> str:
        """The allowed values and the default in words: ``a number > 0 (default 0.1)``, ``a | b (default a)``."""
        if self.choices:
            kind = " | ".join(self.choices)
        else:
            kind = {float: "a number", int: "a whole number", bool: "true | false", str: "a string"}[self.type]
        return f"{kind}{' ' + self.bound if self.bound else ''} (default {self.default})"

    def check(self, value: Any) -> Any:
        """``value`` checked against this declaration and returned, a number given as a string ("1e-3", which
        YAML reads as a string) converted. Raises ``ConfigError`` naming the key, the value and what would do."""
        if self.choices:
            check_choice(self.name, value, self.choices)
        elif self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name}: {show(value)} is not valid; use true or false")
        elif self.type is str:
            if not isinstance(value, str):
                raise ConfigError(f"{self.name}: {show(value)} is not valid; use a string")
        else:
            if isinstance(value, str):
                try:
                    value = self.type(value)
                except ValueError:
                    pass  # refused below, by its type
            if self.type is int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{self.name}: {show(value)} is not a whole number; use e.g. {self.name}=1")
            check_number(self.name, value, low=self.low, strict=self.strict)
        return value


@dataclass(frozen=True)
class Method:
    """One unlearning method.

    ``summary`` (and ``summary_zh``, Chinese; the English one where empty) is the method's one-line description
    in the web panel's method list. ``logged`` names the extra scalars its forget term returns, which the trainer
    logs beside ``forget_loss`` (an undeclared one is refused at the first step).
    """

    name: str
    forget_term: ForgetTerm
    reduction: Literal["token", "sequence"]
    default_retain_loss: Literal["nll", "kl"]
    hyperparameters: tuple[Hyperparameter, ...]
    needs_forget_reference: Callable[[UnlearningArguments], bool]
    summary: str
    reference_statistic: ReferenceStatistic = "rows"
    soft_target: SoftTarget | None = None  # None: the forget term distils toward no distribution
    summary_zh: str = ""
    logged: tuple[str, ...] = ()


def _ga(logits, labels, reference, args):
    return losses.ga_loss(logits, labels), {}


def _npo(logits, labels, ref_nll, args):
    nll, counts = losses.sequence_nll(logits, labels)
    with torch.no_grad():
        keep = counts > 0
        # log π_θ(y|x) − log π_ref(y|x): falls below 0 as the model forgets; a collapse shows here first.
        log_ratio = (ref_nll - nll)[keep].mean() if keep.any() else nll.new_zeros(())
    return losses.npo_loss_from_nll(nll, ref_nll, counts, args.npo_beta), {"npo_log_ratio": log_ratio}


def _simnpo(logits, labels, reference, args):
    return losses.simnpo_loss(logits, labels, args.simnpo_beta, args.simnpo_delta), {}


def _undial(logits, labels, ref_rows, args):
    return losses.undial_loss(logits, ref_rows, labels, args.undial_gamma), {}


def _unilogit(logits, labels, ref_rows, args):
    return losses.unilogit_forget_loss(logits, labels, ref_rows, args.unilogit_divergence), {}


def _undial_target(rows, y, args):
    return losses.undial_target_log_probs(rows, y, args.undial_gamma)


def _unilogit_target(rows, y, args):
    return losses.unilogit_target_log_probs(rows, y)


def _never(args: UnlearningArguments) -> bool:
    return False


def _always(args: UnlearningArguments) -> bool:
    return True


def _unilogit_needs_reference(args: UnlearningArguments) -> bool:
    return args.unilogit_target == "initial"


METHODS: dict[str, Method] = {}  # filled by register(), the built-in methods below first

BUILT_IN_METHODS = (
    Method(
        "ga",
        _ga,
        "token",
        "nll",
        (),
        _never,
        "gradient ascent on the forget NLL",
        summary_zh="对遗忘集负对数似然做梯度上升",
    ),
    Method(
        "npo",
        _npo,
        "sequence",
        "nll",
        (
            Hyperparameter(
                "npo_beta",
                float,
                0.1,
                label="NPO β",
                label_zh="NPO β",
                help="NPO's inverse temperature β: larger β keeps the model nearer the reference",
                help_zh="NPO 的逆温度 β：β 越大，模型越接近参考模型",
                low=0.0,
                strict=True,
            ),
        ),
        _always,
        "negative preference optimisation",
        reference_statistic="sequence_nll",
        summary_zh="负偏好优化",
        logged=("npo_log_ratio",),
    ),
    Method(
        "simnpo",
        _simnpo,
        "sequence",
        "nll",
        (
            Hyperparameter(
                "simnpo_beta",
                float,
                4.5,
                label="SimNPO β",
                label_zh="SimNPO β",
                help="SimNPO's inverse temperature β on the length-normalised NLL",
                help_zh="SimNPO 在按长度归一化的负对数似然上的逆温度 β",
                low=0.0,
                strict=True,
            ),
            Hyperparameter(
                "simnpo_delta",
                float,
                0.0,
                label="SimNPO δ",
                label_zh="SimNPO δ",
                help="SimNPO's reward margin δ",
                help_zh="SimNPO 的奖励间隔 δ",
                low=0.0,
            ),
        ),
        _never,
        "reference-free, length-normalised NPO",
        summary_zh="无需参考模型、按长度归一化的 NPO",
    ),
    Method(
        "undial",
        _undial,
        "token",
        "nll",
        (
            Hyperparameter(
                "undial_gamma",
                float,
                10.0,
                label="UnDIAL γ",
                label_zh="UnDIAL γ",
                help="UnDIAL's γ: how far the label's logit is lowered in its teacher",
                help_zh="UnDIAL 的 γ：在教师分布中将标签 logit 降低的幅度",
                low=0.0,
            ),
        ),
        _always,
        "self-distillation with adjusted logits",
        soft_target=_undial_target,
        summary_zh="调整 logit 后的自蒸馏",
    ),
    Method(
        "unilogit",
        _unilogit,
        "token",
        "kl",
        (
            Hyperparameter(
                "unilogit_target",
                str,
                "current",
                label="Unilogit target source",
                label_zh="Unilogit 目标来源",
                help="Where Unilogit's target distribution comes from: current (the model itself, as in the "
                "paper) or initial (the starting model θ_o, an ablation)",
                help_zh="目标分布的来源：current（当前模型本身，论文设置）或 initial（初始模型 θ_o，消融实验）",
                choices=("current", "initial"),
                widget="dropdown",
            ),
            Hyperparameter(
                "unilogit_divergence",
                str,
                "reverse",
                label="Unilogit divergence",
                label_zh="Unilogit 散度",
                help="Unilogit's forget divergence: reverse, KL(p_θ ‖ target), as in the paper; forward, "
                "KL(target ‖ p_θ), an ablation",
                help_zh="Unilogit 的遗忘散度：reverse，KL(p_θ ‖ 目标)，论文设置；forward，KL(目标 ‖ p_θ)，消融实验",
                choices=("reverse", "forward"),
                widget="dropdown",
            ),
        ),
        _unilogit_needs_reference,
        "self-distillation toward the model's own distribution with the label at 1/|V|",
        soft_target=_unilogit_target,
        summary_zh="向模型自身分布自蒸馏，标签概率设为 1/|V|",
    ),
)


# Keys no method's hyperparameter may take: the stage's own, which stage.args reserves when it is imported.
_RESERVED_KEYS: set[str] = set()


def reserve_keys(keys: Iterable[str]) -> None:
    """Keep ``keys`` (the stage's own) from every method's hyperparameters: :func:`register` refuses them from now
    on, and a method registered before with one of them is refused here (``ValueError``)."""
    keys = set(keys)
    for hp in all_hyperparameters():
        if hp.name in keys:
            raise ValueError(f"the key {hp.name!r} of a registered method is the stage's own; rename it")
    _RESERVED_KEYS.update(keys)


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS`, so that ``unlearn_method: <name>`` trains it and its hyperparameters
    join the config checks, ``unilogit train --help``, the web panel and :func:`hyperparameter_table`.

    Raises ``ValueError`` for a name that is taken, a hyperparameter whose name another method or the stage
    already uses, or a default that its own declaration refuses. Returns ``method``.
    """
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is registered already")
    taken = _RESERVED_KEYS | {hp.name for hp in all_hyperparameters()}
    for hp in method.hyperparameters:
        if hp.name in taken:
            raise ValueError(f"{method.name}: the key {hp.name!r} is taken; prefix it with the method's name")
        fits = {
            "number": hp.type in (float, int),
            "dropdown": hp.type is str and bool(hp.choices),
            "checkbox": hp.type is bool,
            "textbox": hp.type is str and not hp.choices,
        }
        if not fits.get(hp.widget):
            raise ValueError(
                f"{method.name}: {hp.name} is a {hp.type.__name__} shown as a {hp.widget}; use a float or int as a "
                "number, a str with choices as a dropdown, a bool as a checkbox, or a str as a textbox"
            )
        hp.check(hp.default)  # a ConfigError, which is a ValueError
    METHODS[method.name] = method
    return method


def all_hyperparameters() -> list[Hyperparameter]:
    """Every registered method's hyperparameters, in the order of :data:`METHODS`."""
    return [hp for method in METHODS.values() for hp in method.hyperparameters]


def hyperparameter_table() -> str:
    """The Markdown table of every method's hyperparameters, as ``docs/CONFIGURATION.md`` shows it."""
    rows = ["| key | method | values | meaning |", "|---|---|---|---|"]
    for method in METHODS.values():
        for hp in method.hyperparameters:
            cells = (f"`{hp.name}`", method.name, hp.values(), hp.help)
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


for _method in BUILT_IN_METHODS:
    register(_method)
