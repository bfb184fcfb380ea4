"""The one place that papers over llamafactory 0.9.5's hard multimodal imports on CPU installs.

llamafactory's ``data/mm_plugin.py`` does a bare ``import torchaudio``, but PyPI only ships CUDA
builds of torchaudio, which fail to load beside the CPU torch, so CPU installs leave it out (see
scripts/setup_env.sh). Text-only unlearning never touches audio, so when the real import fails we
register an empty stand-in module; any attempt to use it raises a clear error.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _MissingTorchaudio(types.ModuleType):
    def __getattr__(self, name: str):
        # AttributeError, not ImportError, so hasattr() and inspect keep working on the stand-in.
        raise AttributeError(
            f"torchaudio.{name} is unavailable: this install has no torchaudio (audio data is not "
            "supported on CPU installs); install a torchaudio build that matches your torch to use audio"
        )


def install_torchaudio_stub() -> None:
    """Register a stand-in ``torchaudio`` only if the real one cannot be imported."""
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA-only build raises OSError/RuntimeError, not only ImportError
        stub = _MissingTorchaudio("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
        sys.modules["torchaudio"] = stub
