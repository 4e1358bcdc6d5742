"""The editor's filter box: `=1girl =smile -hat` shows images with 1girl AND smile AND no hat.

Terms, all of which must hold:

    smile          some tag contains "smile"
    =smile         a tag is exactly "smile"
    -hat / !hat    no tag is exactly "hat"
    lint           the caption has a lint problem;  lint:KIND  one of that kind
    noface         the face detector ran and found no face
    todo / done    not yet accepted / accepted
    in:FOLDER      the image is in that sub-folder (or below it)

Tags match ignoring case and `_` versus space (`Red_Hair` = `red hair`). A term runs until the next
one starts (`=blue hair -hat` is two terms); commas also separate terms. An unknown `lint:` kind is
an error, not an empty result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prep.captions.lint import KINDS
from prep.errors import UsageError
from prep.tags import tag_key

WORDS = ("lint", "noface", "todo", "done")
_START = re.compile(rf"(?:^|\s)(?=[=!-]|(?:{'|'.join(WORDS)})(?::|\s|$)|in:)")


@dataclass(frozen=True)
class Term:
    """One condition: `kind` is contains / exact / without / lint / noface / todo / done / folder."""

    kind: str
    value: str = ""


def split_terms(text: str) -> list[str]:
    """`=blue hair -hat, todo` → ["=blue hair", "-hat", "todo"]."""
    pieces = []
    for part in text.split(","):
        starts = sorted({0, *(m.end() for m in _START.finditer(part))})
        for begin, end in zip(starts, starts[1:] + [len(part)]):
            piece = part[begin:end].strip()
            if piece:
                pieces.append(piece)
    return pieces


def parse_term(piece: str) -> Term:
    head, colon, rest = piece.partition(":")
    if head == "lint":
        kind = rest.strip()
        if colon and kind not in KINDS:
            raise UsageError(f"unknown lint kind '{kind}'", hint=f"use one of: {', '.join(KINDS)}")
        return Term("lint", kind)
    if piece in ("noface", "todo", "done"):
        return Term(piece)
    if head == "in" and colon:
        return Term("folder", rest.strip().strip("/"))
    if piece[0] in "=!-":
        kind = "exact" if piece[0] == "=" else "without"
        value = tag_key(piece[1:])
        if not value:
            raise UsageError(f"'{piece}' names no tag", hint="write the tag after it, e.g. =smile or -hat")
        return Term(kind, value)
    return Term("contains", tag_key(piece))


def parse_filter(text: str) -> list[Term]:
    """Every term of a filter (an empty list shows everything); UsageError on a term that cannot match."""
    return [parse_term(piece) for piece in split_terms(text.strip())]
