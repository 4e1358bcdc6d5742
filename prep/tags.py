"""Pure tag operations on comma-separated captions."""

from __future__ import annotations

from collections.abc import Iterable


def split_tags(caption: str | None) -> list[str]:
    """`"a, b ,c"` → `["a", "b", "c"]`; empty pieces dropped, order kept."""
    if not caption:
        return []
    return [piece.strip() for piece in caption.split(",") if piece.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)
