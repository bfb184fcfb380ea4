"""Our messages as the page shows them: Gradio renders Markdown boxes and toasts as HTML, so a message
such as ``set retain_dataset: <name in dataset_info.json>`` loses its ``<...>`` part as an unknown tag."""

from __future__ import annotations

import html
import re

# Markdown's inline markup; character references show these as written in Markdown and in HTML alike.
_MARKUP = re.compile(r"[\\`*_\[\]~|#]")


def escape(text: str) -> str:
    """``text`` shown exactly as written in a Markdown box or a toast (``html.unescape`` gives it back)."""
    return _MARKUP.sub(lambda match: f"&#{ord(match.group())};", html.escape(text, quote=False))
