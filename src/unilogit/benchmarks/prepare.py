"""Target and retrain models of a benchmark: trained once with llamafactory's stages, then cached.

A model is trained from a YAML config (any llamafactory stage) in a subprocess of ``unilogit train``,
into a temporary folder that is renamed into place only when training succeeded. Its cache key hashes
the resolved configuration (minus ``output_dir``) and the bytes of every local dataset file it reads,
so a changed config, changed data or a different base model trains a new model and an unchanged one
is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from unilogit.config import load_config
from unilogit.errors import ConfigError
from unilogit.models import cache_dir, resolve_model

DONE_MARKER = "unilogit_prepared.json"


def _dataset_files(config: dict[str, Any]) -> list[Path]:
    """Local files behind the config's ``dataset`` names (hub datasets have none)."""
    dataset_dir = Path(config.get("dataset_dir", "data"))
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise ConfigError(f"dataset_dir: {info_path} is missing; point dataset_dir at a folder with dataset_info.json")
    info = json.loads(info_path.read_text())
    files = []
    for name in str(config.get("dataset", "")).split(","):
        name = name.strip()
        if name not in info:
            raise ConfigError(f"dataset: {name!r} is not in {info_path}; add it or fix the name")
        if "file_name" in info[name]:
            path = dataset_dir / info[name]["file_name"]
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def cache_key(config: dict[str, Any]) -> str:
    """Hash of the resolved config (without ``output_dir``) and the bytes of its local dataset files."""
    digest = hashlib.sha256()
    stable = {k: v for k, v in sorted(config.items()) if k not in ("output_dir", "overwrite_output_dir")}
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    for path in _dataset_files(config):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_model(name: str, config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """Train (or reuse) the model described by ``config_path`` + ``overrides``; returns its folder."""
    argv = [str(config_path), *(overrides or [])]
    config = load_config(argv)
    config["model_name_or_path"] = resolve_model(str(config["model_name_or_path"]))
    target = cache_dir() / "prepared" / f"{name}-{cache_key(config)}"
    if (target / DONE_MARKER).is_file():
        print(f"[unilogit] {name}: reusing {target}", file=sys.stderr)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[unilogit] {name}: training with {config_path} into {target}", file=sys.stderr)
    cmd = [sys.executable, "-m", "unilogit.cli", "train", *argv, f"output_dir={tmp}", "overwrite_output_dir=true"]
    try:
        # Training output goes to stderr: stdout carries only the prepared paths, for scripts to read.
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            raise ConfigError(f"{name}: training with {config_path} failed (see the log above)")
        (tmp / DONE_MARKER).write_text(json.dumps({"config": str(config_path), "overrides": overrides or []}))
        if target.exists():  # a folder without the marker was not finished by this function: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
