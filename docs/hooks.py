"""MkDocs hook: the site's home page is the README, with its links into docs/ made site-relative.

One text for GitHub's front page and the site's, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    return text.replace("by `make docs` (MkDocs; open `site/index.html`)", "by `make docs`")
