"""Where the project's folders are: the root that holds ``examples/``, ``data/`` and ``saves/``.

The root is, in order: the ``UNILOGIT_ROOT`` environment variable; the checkout the package was installed
from (``pip install -e`` records it in the distribution's ``direct_url.json``); the current folder. So a
command finds the shipped configs and mini benchmarks from any working folder, and a wheel installed
elsewhere finds them through ``UNILOGIT_ROOT`` or by running from a checkout.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from unilogit.errors import ConfigError

ROOT_ENV = "UNILOGIT_ROOT"


def project_root() -> Path:
    """The folder that holds the project's ``examples/`` and ``data/`` (see the module's docstring)."""
    explicit = os.environ.get(ROOT_ENV)
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise ConfigError(f"{ROOT_ENV}={explicit} is not a folder; set it to the unilogit checkout (with data/)")
        return root.resolve()
    return _installed_from() or Path.cwd()


@functools.cache
def _installed_from() -> Path | None:
    """The local folder pip installed this package from, or None (a wheel, an index, or not installed)."""
    try:
        text = metadata.distribution("unilogit").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    url = urlparse(json.loads(text).get("url", "")) if text else None
    if url is None or url.scheme != "file":
        return None
    folder = Path(unquote(url.path))
    return folder if folder.is_dir() else None


def project_dir(name: str) -> Path:
    """The project's ``name`` folder (``data``, ``examples``), which must exist under :func:`project_root`."""
    root = project_root()
    folder = root / name
    if not folder.is_dir():
        raise ConfigError(f"{name}/ is not in {root}; set {ROOT_ENV} to the unilogit checkout that holds {name}/")
    return folder


def data_dir() -> Path:
    """The project's ``data/`` folder: ``dataset_info.json`` and the mini benchmarks."""
    return project_dir("data")


def examples_dir() -> Path:
    """The project's ``examples/`` folder: the shipped YAML configs."""
    return project_dir("examples")


def saves_dir() -> Path:
    """The project's ``saves/`` folder, where prepared models and registered datasets go (created on write)."""
    return project_root() / "saves"


def shipped(path: str) -> str:
    """``path`` as given when it exists, else under :func:`project_root` when the project has it there (so
    ``data/muse_mini`` means the shipped mini benchmark from any folder), else as given."""
    if Path(path).exists():
        return path
    under_root = project_root() / path
    return str(under_root) if under_root.exists() else path
