"""Reading a config: the YAML with its ``key=value`` overrides, the key check, type coercion and the checks
that need no model. Shared by ``unilogit train``, the stage, the sweeps and the benchmarks; imports no layer above.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from unilogit.errors import ConfigError, first_line

# The resolved config a run folder keeps: the stage writes it, `unilogit report` evaluates the run from it.
CONFIG_NAME = "unlearn_config.yaml"
# What a prepared (cached) target or retrain model keeps beside its weights: the config and overrides it was
# trained with and its training seed. Written last, so a folder without it is unfinished.
PREPARED_MARKER = "unilogit_prepared.json"

_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def show(value: Any) -> str:
    """A config value as error messages quote it: its repr, shortened, always on one line."""
    return _REPR.repr(value)


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` unless ``value`` is one of the strings ``allowed``, naming them."""
    if not (isinstance(value, str) and value in allowed):
        raise ConfigError(f"{key}: {show(value)} is not valid; allowed values: {' | '.join(allowed)}")


def check_number(key: str, value: Any, low: float | None = None, strict: bool = False) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number (not a bool) at or above ``low`` (above it with
    ``strict``), naming the bound."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: {show(value)} is not a number; use e.g. {key}=0.5")
    try:
        ok = math.isfinite(value) and (low is None or (value > low if strict else value >= low))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        bound = "" if low is None else f" > {low:g}" if strict else f" >= {low:g}"
        raise ConfigError(f"{key}: {show(value)} is out of range; use a finite number{bound}")


def nearest_key(key: Any, valid: list[str]) -> str | None:
    """The valid key closest to a misspelled one, or None (always None for a key that is not a string)."""
    if not isinstance(key, str):
        return None
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return match[0] if match else None


# --------------------------------------------------------------------------------------------------
# Types of llamafactory's keys
# --------------------------------------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class _Refused(Exception):
    """A value that does not fit a type; the message says what would."""


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(m) for m in typing.get_args(hint) if m is not type(None)))
    if origin is Literal:
        return "one of " + " | ".join(str(c) for c in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + " | ".join(str(m.value) for m in hint)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as a ``hint``, converting the spellings HfArgumentParser accepts on a command line
    ("1e-5" for a float, "true" for a bool); raises ``_Refused`` when it does not fit."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        for member in sorted(members, key=lambda m: not _fits_exactly(value, m)):  # an exact fit first
            if member is not type(None):
                try:
                    return _coerce(value, member)
                except _Refused:
                    pass
        raise _Refused(_describe(hint))
    if hint is type(None):
        if value is None:
            return None
        raise _Refused("null")
    if origin is Literal:
        for choice in typing.get_args(hint):
            if type(value) is type(choice) and value == choice:
                return value
        raise _Refused(_describe(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint) or any(type(value) is type(m.value) and value == m.value for m in hint):
            return value
        raise _Refused(_describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise _Refused(_describe(hint))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _Refused(_describe(hint))
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _Refused(_describe(hint))
    if hint is str or hint is Path:
        if isinstance(value, str):
            return value
        raise _Refused(_describe(hint))
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _Refused(_describe(hint))
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, item) for v in value]
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return value
        raise _Refused(_describe(hint))
    return value  # a class of its own (GenerationConfig, ...): llamafactory judges it


def _fits_exactly(value: Any, hint: Any) -> bool:
    if isinstance(hint, type) and not issubclass(hint, enum.Enum):
        return type(value) is hint or (hint is float and type(value) is int)
    return False


def check_field_types(config: Mapping[str, Any], classes: Iterable[type], skip: Iterable[str] = ()) -> dict[str, Any]:
    """``config`` with each value of a field of ``classes`` checked against the field's annotation.

    llamafactory hands a config dict to its dataclasses as it is (``HfArgumentParser.parse_dict``
    converts nothing), so ``learning_rate: abc`` would pass and ``logging_steps: x`` fail with a
    ``TypeError`` deep inside transformers. Numbers and booleans written as strings ("1e-5", "true")
    are converted, as on a command line; ``None`` is accepted where the field allows it or defaults
    to it. Keys in ``skip`` and keys of no field pass unchanged. Raises ``ConfigError`` naming the key,
    the value and what it should be.
    """
    out = dict(config)
    skip = set(skip)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in out or f.name in skip or not f.init:
                continue
            value = out[f.name]
            if value is None and f.default is None:
                continue
            try:
                out[f.name] = _coerce(value, hints[f.name])
            except _Refused as want:
                raise ConfigError(f"{f.name}: {show(value)} is not valid; use {want}") from None
    return out


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=", re.ASCII)


def load_config(argv: list[str]) -> dict[str, Any]:
    """Read ``CONFIG.yaml [key=value ...]`` into a dict, as llamafactory's ``read_args`` does."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        raise ConfigError("train needs a config file: unilogit train CONFIG.yaml [key=value ...]")
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path")
    try:
        config = OmegaConf.load(path)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except OSError as err:  # OmegaConf's "Invalid loaded object type" for a file that is one scalar
        if "Invalid loaded object type" not in str(err):
            raise ConfigError(f"{path} cannot be read: {first_line(err)}") from None
        config = None
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path}: {first_line(err)}; fix the file") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: the config must be a mapping of key: value")
    for item in argv[1:]:
        if not OVERRIDE.match(item):
            raise ConfigError(f"bad override {show(item)}: write key=value (key a name, e.g. learning_rate=1e-5)")
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(config, OmegaConf.from_dotlist(argv[1:])))
    except (OmegaConfBaseException, YAMLError, ValueError, LookupError, TypeError) as err:
        raise ConfigError(f"bad override {show(argv[1:])}: {first_line(err)}; write key=value") from None
    return merged


def check_keys(config: Mapping[str, Any], own_keys: Iterable[str]) -> None:
    """One-line error for a key that is neither llamafactory's nor in ``own_keys``, with the nearest valid one."""
    from dataclasses import fields

    from llamafactory.hparams.parser import _TRAIN_ARGS

    if os.environ.get("ALLOW_EXTRA_ARGS", "0").lower() in ("1", "true", "y"):
        return
    valid = [f.name for cls in _TRAIN_ARGS for f in fields(cls) if f.init] + list(own_keys)
    for key in config:
        if key not in valid:
            hint = nearest_key(key, valid)
            fix = f"did you mean {hint!r}?" if hint else "remove it (see `unilogit train --help` for the keys)"
            raise ConfigError(f"unknown config key {show(key)}; {fix}")


def check_deepspeed(config: Mapping[str, Any]) -> None:
    """DeepSpeed needs its package; with no GPU visible it runs on its CPU accelerator over gloo, and the
    settings that need a GPU are refused here, before anything loads."""
    import importlib.util

    from llamafactory.extras.misc import get_device_count

    if not config.get("deepspeed"):
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "deepspeed: the deepspeed package is not installed; run bash scripts/setup_env.sh (or pip install "
            "deepspeed), or remove deepspeed: to train without it"
        )
    if get_device_count() > 0:
        return
    backend = config.get("ddp_backend")
    if backend not in (None, "gloo"):
        raise ConfigError(
            f"ddp_backend: {backend} needs a GPU and none is visible; DeepSpeed on the CPU runs over gloo, "
            "so remove ddp_backend (or set it to gloo)"
        )
    if config.get("fp16") and not cpu_has_fp16():
        raise ConfigError("fp16: this CPU has no fp16 kernels for DeepSpeed to train with; use bf16: true or neither")
    if config.get("quantization_bit") is not None:
        raise ConfigError(
            "quantization_bit: quantized training needs a GPU and none is visible; remove quantization_bit"
        )


def check_adapters(config: Mapping[str, Any]) -> None:
    """Each local folder in ``adapter_name_or_path`` (comma-separated) must hold a LoRA adapter; peft would
    otherwise fail on it after the base model loaded, with a traceback under llamafactory's stages."""
    adapters = config.get("adapter_name_or_path")
    if not isinstance(adapters, str):  # unset; another type is refused by the type check
        return
    for name in (part.strip() for part in adapters.split(",")):
        if name and Path(name).is_dir() and not (Path(name) / "adapter_config.json").is_file():
            raise ConfigError(
                f"adapter_name_or_path: {name} has no adapter_config.json, so it holds no LoRA adapter; give the "
                "output_dir of a LoRA run (finetuning_type: lora), or remove adapter_name_or_path"
            )


def cpu_has_fp16() -> bool:
    """DeepSpeed's own test on its CPU accelerator (``is_fp16_supported``): oneDNN's fp16 kernels."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


# --- lists in config files (the sweeps' and the benchmarks' keys) ----------------------------------------


def format_value(value: Any) -> str:
    """A grid value as written in ``key=value`` overrides and point ids (``true``, ``null``, ``0.001``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def string_list(where: str, value: Any) -> list[str]:
    """A config file's list of plain values (``None`` for none) as strings, in :func:`format_value`'s form."""
    if value is None:
        return []
    if not isinstance(value, list) or any(isinstance(v, dict | list) or v is None for v in value):
        raise ConfigError(f'{where}: must be a list of strings, e.g. ["--max-examples", "4"]')
    return [format_value(v) for v in value]


def key_values(where: str, value: Any, example: str = "bf16=false") -> list[str]:
    """A config file's list of ``key=value`` items (``None`` for none), as strings; anything else is refused in
    one line naming ``where`` and showing ``example``."""
    if value is not None and not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list of key=value, e.g. [{example}]")
    items = string_list(where, value)
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0].strip()]
    if bad:
        raise ConfigError(f"{where}: {bad[0]!r} is not key=value; write e.g. {example}")
    return items
