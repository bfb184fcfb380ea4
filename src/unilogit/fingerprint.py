"""Content fingerprints for cache keys: what a cached result depends on, by bytes rather than by name.

A cache hit must mean "the same inputs", so keys hash file contents (data, models, the evaluator's source
files), never paths, sizes or times. Hub ids and other non-local names enter the key as their text.

    python -m unilogit.fingerprint [--shallow] PATH_OR_NAME ...    # one key over all of them, for the drivers

A model folder is keyed ``shallow``: by its top-level files (weights, configs, tokenizer), because results
cached beside a model (``muse_eval-*/``) live in subfolders and must not change the model's key.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def _update_with_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


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
            digest.update(b"file\x00")
            _update_with_file(digest, path)
        elif path is not None and path.is_dir():
            digest.update(b"dir\x00")
            for file in sorted(p for p in (path.glob("*") if shallow else path.rglob("*")) if p.is_file()):
                digest.update(file.relative_to(path).as_posix().encode() + b"\x00")
                _update_with_file(digest, file)
        else:
            digest.update(f"text\x00{item}".encode())
    return digest.hexdigest()[:16]


def source_files(modules: Iterable[str]) -> list[Path]:
    """The source files of the named ``unilogit`` modules (``"evaluation.muse"`` -> ``.../evaluation/muse.py``),
    for keys that must change when the code that computes a result changes."""
    package = Path(__file__).resolve().parent
    return [package / (name.replace(".", "/") + ".py") for name in modules]


def main(argv: list[str] | None = None) -> None:
    """``python -m unilogit.fingerprint [--shallow] ITEM ...``: print the key of the items (files, folders or
    text); ``--shallow`` keys folders by their top-level files, as for models."""
    args = sys.argv[1:] if argv is None else argv
    shallow = bool(args) and args[0] == "--shallow"
    print(fingerprint(*args[shallow:], shallow=shallow))


if __name__ == "__main__":
    main()
