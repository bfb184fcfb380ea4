"""Content fingerprints for cache keys: what a cached result depends on, by bytes rather than by name.

A cache hit must mean "the same inputs", so keys hash file contents (data, models, the evaluator's source
files), never paths, sizes or times. Hub ids and other non-local names enter the key as their text. The digest
of a large file (model weights) is remembered by its path, size, modification time and inode, so that a 7B
checkpoint is read once rather than at every key (:func:`file_digest`).

    python -m unilogit.fingerprint [--shallow] PATH_OR_NAME ...    # one key over all of them, for the drivers

A model folder is keyed ``shallow``: by its top-level files (weights, configs, tokenizer), because results
cached beside a model (``muse_eval-*/``) live in subfolders and must not change the model's key.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_text
from unilogit.models import cache_dir

_CHUNK = 1 << 20
# Smaller files (data, code, configs) are always read: only weights are worth remembering.
MEMO_MIN_BYTES = 64 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The SHA-256 of ``path``'s bytes. For files of at least :data:`MEMO_MIN_BYTES` it is remembered in
    ``<cache>/file-digests.json`` under the file's resolved path, with its size, modification time and inode,
    and read from there while all three stay the same."""
    stat = path.stat()
    if stat.st_size < MEMO_MIN_BYTES:
        return _sha256(path)
    memo_file = cache_dir() / "file-digests.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: start afresh
        memo = {}
    name, stamp = str(path.resolve()), f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    if memo.get(name, {}).get("stamp") == stamp:
        return memo[name]["sha256"]
    memo[name] = {"stamp": stamp, "sha256": _sha256(path)}
    with contextlib.suppress(OSError):  # a read-only cache only costs the next key a re-read
        atomic_write_text(memo_file, json.dumps(memo, indent=0))
    return memo[name]["sha256"]


def fingerprint(*items: str | Path | dict[str, Any] | None, shallow: bool = False) -> str:
    """A 16-hex-digit key over ``items``: a local file by its bytes, a local folder by the relative names and
    bytes of every file under it (sorted; with ``shallow``, its top-level files only), a dict by its JSON
    (sorted keys), anything else by its text.

    Two calls agree exactly when every file's bytes, every folder's file set and every other item agree.
    """
    digest = hashlib.sha256()
    for item in items:
        digest.update(b"\x00item\x00")
        if isinstance(item, dict):
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
            continue
        path = Path(str(item)) if item is not None else None
        if path is not None and path.is_file():
            digest.update(b"file\x00" + file_digest(path).encode())
        elif path is not None and path.is_dir():
            digest.update(b"dir\x00")
            for file in sorted(p for p in (path.glob("*") if shallow else path.rglob("*")) if p.is_file()):
                digest.update(file.relative_to(path).as_posix().encode() + b"\x00" + file_digest(file).encode())
        else:
            digest.update(f"text\x00{item}".encode())
    return digest.hexdigest()[:16]


def _module_file(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin) if spec is not None and spec.origin else None


def _evaluation_imports(path: Path) -> set[str]:
    """The unilogit modules ``path`` imports (at any depth of its code) that an evaluation runs: the evaluation
    package's and the top-level leaves' (losses, models, ...), not the commands, the sweeps or the stage."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "unilogit":
            names.update(f"unilogit.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {
        n for n in names if (n.count(".") == 1 and n.startswith("unilogit.")) or n.startswith("unilogit.evaluation.")
    }


def evaluator_code(evaluator: str, *modules: str) -> list[Path]:
    """The source files a benchmark's numbers come from: the ``evaluator`` module and every evaluation or leaf
    module it imports, transitively (read with ``ast``, so a new module is never missed), plus ``modules`` (the
    benchmark's command module) and ``models.py`` (loading and placing the models). Reads source only: no
    import of torch, so the drivers can key their caches cheaply."""
    files = {file for file in map(_module_file, (*modules, "unilogit.models")) if file is not None}
    todo, seen = [evaluator], set()
    while todo:
        name = todo.pop()
        file = _module_file(name) if name not in seen else None
        seen.add(name)
        if file is not None and file.suffix == ".py":
            files.add(file)
            todo.extend(_evaluation_imports(file) - seen)
    return sorted(files)


def main(argv: list[str] | None = None) -> None:
    """``python -m unilogit.fingerprint [--shallow] ITEM ...``: print the key of the items (files, folders or
    text); ``--shallow`` keys folders by their top-level files, as for models."""
    args = sys.argv[1:] if argv is None else argv
    shallow = bool(args) and args[0] == "--shallow"
    print(fingerprint(*args[shallow:], shallow=shallow))


if __name__ == "__main__":
    main()
