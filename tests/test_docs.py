"""The README and docs/: every relative link and anchor resolves, the README stays short, and CI runs its command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

README_LIMIT = 15_000
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); a target has no spaces (an optional "title" may follow).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def links(page: Path) -> list[str]:
    """Every link target in ``page``'s prose, in order (inline code holds none)."""
    prose = [_INLINE_CODE.sub("", line) for line in _prose(page.read_text(encoding="utf-8"))]
    return [m.group(1) for line in prose for m in _LINK.finditer(line)]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives ``page``'s headings: lowercased, punctuation dropped, spaces as hyphens, and
    ``-1``, ``-2`` ... after a repeated one."""
    seen: dict[str, int] = {}
    for line in _prose(page.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file, or whose anchor in a Markdown file, does not exist."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading, with `code`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [ok](there.md#twice-1) [web](https://example.com)\n"
        "[missing](nowhere.md) [bad anchor](there.md#nothing) [own](#none)\n"
        "```\n[in code](ignored.md)\n```\n`[inline](ignored.md)`\n"
    )
    assert broken_links(page) == ["nowhere.md", "there.md#nothing", "#none"]


def test_every_doc_is_reachable_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details to docs/ (limit {README_LIMIT})"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"^(bash scripts/setup_env\.sh --test && \S+ -m pytest -q[^#\n]*?)\s+#", readme, re.MULTILINE)
    assert command, "the README's first code block lost its test command"
    assert command.group(1) in (ROOT / ".ci" / "run").read_text().splitlines()
