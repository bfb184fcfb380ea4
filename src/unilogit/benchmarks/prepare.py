"""Target and retrain models of a benchmark: trained once with llamafactory's stages, then cached.

A model is trained from a YAML config (any llamafactory stage) in a subprocess of ``unilogit train``,
into a temporary folder that is renamed into place only when training succeeded (``atomic_folder``). Its
cache key hashes what the model depends on: the resolved configuration (minus ``output_dir``), the bytes of
the base model it trains from (a hub id by its name), and the registration and bytes of every local dataset
it reads. A changed config, changed data or a changed base model trains a new model; an unchanged one is
reused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_folder, atomic_write_text
from unilogit.config import PREPARED_MARKER, load_config
from unilogit.errors import ConfigError
from unilogit.fingerprint import fingerprint
from unilogit.models import cache_dir, resolve_model


def _datasets(config: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    """The ``dataset_info.json`` entries of the config's ``dataset`` names (how each is read: its file, columns
    and format) and the local files behind them (hub datasets have none)."""
    dataset_dir = Path(config.get("dataset_dir", "data"))
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise ConfigError(f"dataset_dir: {info_path} is missing; point dataset_dir at a folder with dataset_info.json")
    info = json.loads(info_path.read_text())
    entries, files = {}, []
    for name in str(config.get("dataset", "")).split(","):
        name = name.strip()
        if name not in info:
            raise ConfigError(f"dataset: {name!r} is not in {info_path}; add it or fix the name")
        entries[name] = info[name]
        if "file_name" in info[name]:
            path = dataset_dir / info[name]["file_name"]
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return entries, files


def cache_key(config: dict[str, Any]) -> str:
    """The key of the model ``config`` trains: its resolved config (without ``output_dir``), the base model's
    bytes (``model_name_or_path``: a local folder by its top-level files, a hub id by its name), and its datasets'
    registrations and the bytes of their local files."""
    stable = {k: v for k, v in config.items() if k not in ("output_dir", "overwrite_output_dir")}
    base_model = fingerprint(config.get("model_name_or_path"), shallow=True)
    entries, files = _datasets(config)
    return fingerprint(stable, base_model, entries, *files)


def prepare_model(name: str, config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """Train (or reuse) the model described by ``config_path`` + ``overrides``; returns its folder."""
    argv = [str(config_path), *(overrides or [])]
    config = load_config(argv)
    config["model_name_or_path"] = resolve_model(str(config["model_name_or_path"]))
    target = cache_dir() / "prepared" / f"{name}-{cache_key(config)}"
    marker_path = target / PREPARED_MARKER
    if marker_path.is_file():
        print(f"[unilogit] {name}: reusing {target}", file=sys.stderr)
        marker = json.loads(marker_path.read_text())
        if "seed" not in marker:  # prepared before markers recorded the seed, which the evaluation rows now carry
            atomic_write_text(marker_path, json.dumps({**marker, "seed": config.get("seed")}))
        return target
    print(f"[unilogit] {name}: training with {config_path} into {target}", file=sys.stderr)
    with atomic_folder(target, PREPARED_MARKER) as tmp:
        cmd = [sys.executable, "-m", "unilogit.cli", "train", *argv, f"output_dir={tmp}", "overwrite_output_dir=true"]
        # Training output goes to stderr: stdout carries only the prepared paths, for scripts to read.
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            raise ConfigError(f"{name}: training with {config_path} failed (see the log above)")
        marker = {"config": str(config_path), "overrides": overrides or [], "seed": config.get("seed")}
        (tmp / PREPARED_MARKER).write_text(json.dumps(marker))
    return target
