"""Atomic writes: a result file is either the old one or the complete new one, never half of each; a built
folder (a converted or trained model) is either absent or complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    _atomic_write(path, data, "wb")


def _atomic_write(path: str | Path, content: str | bytes, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(content)
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(target: str | Path, marker: str) -> Iterator[Path]:
    """Build the folder ``target`` in a temporary sibling, yielded, and rename it into place when the block ends
    without an error; on an error the sibling is removed and ``target`` is left as it was.

    ``marker`` names the file that makes a folder complete, which the block must write. A ``target`` that holds
    it when the block ends was finished by another process meanwhile (two sweep points converting one model): it
    is kept, and this one discarded. A ``target`` without it (an interrupted older build, or a stray folder) is
    replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the folder a plain mkdir would make
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"{target}: the build wrote no {marker}, so it would never count as complete")
        if (target / marker).is_file():
            return
        if target.exists():
            # Moved aside in one rename, so a concurrent build never finds half of it.
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / marker).is_file():  # not another process's complete folder, which won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
