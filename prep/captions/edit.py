"""Bulk caption edits as pure functions: an operation maps one tag list to another.

`plan_edit` applies an operation to every caption matching the `--where` filters and returns the
changes (old bytes → new text) without touching disk; `prep.captions.journal.apply_plan` writes
them. Only captions whose tag list actually changes are rewritten, so a no-op edit (replacing a tag
with itself, removing an absent tag) leaves every file byte-identical.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prep.captions.dataset import CaptionDataset, CaptionFile
from prep.errors import UsageError
from prep.tags import join_tags, split_tags, tag_key  # tag_key: `Red_Hair` ~ `red hair` (kaomoji kept)

Tags = tuple[str, ...]


def parse_tags(values: Iterable[str]) -> list[str]:
    """Command-line tag arguments: each may itself be a comma-separated list."""
    return [tag for value in values for tag in split_tags(value)]


def require_tags(values: Iterable[str], command: str) -> tuple[str, ...]:
    """The tags of a command that needs at least one (`captions add DS ''` is a usage error)."""
    tags = tuple(parse_tags(values))
    if not tags:
        raise UsageError(f"`captions {command}` got no tag (empty or only commas)",
                         hint=f"name the tags, e.g. `loraprep captions {command} DS \"red hair, smile\"`")
    return tags


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"bad regular expression {pattern!r}: {exc}", hint="check brackets and escapes") from exc


def _unique(tags: Iterable[str]) -> Tags:
    seen: set[str] = set()
    return tuple(t for t in tags if not (t in seen or seen.add(t)))  # type: ignore[func-returns-value]


@dataclass(frozen=True)
class AddTags:
    """Add tags not already present, at the end or at the front (front keeps their given order)."""

    tags: Tags
    front: bool = False

    def __call__(self, tags: Tags) -> Tags:
        new = tuple(t for t in _unique(self.tags) if t not in tags)
        return new + tags if self.front else tags + new

    def describe(self) -> str:
        return f"add {join_tags(self.tags)}" + (" at the front" if self.front else "")


@dataclass(frozen=True)
class RemoveTags:
    """Remove tags equal to any given one, or (regex) fully matching any given pattern."""

    tags: Tags
    regex: bool = False

    def __call__(self, tags: Tags) -> Tags:
        if self.regex:
            patterns = [_compile(p) for p in self.tags]
            return tuple(t for t in tags if not any(p.fullmatch(t) for p in patterns))
        drop = set(self.tags)
        return tuple(t for t in tags if t not in drop)

    def describe(self) -> str:
        return f"remove {'regex ' if self.regex else ''}{join_tags(self.tags)}"


@dataclass(frozen=True)
class ReplaceTag:
    """Replace a tag (or, with regex, substitute in every tag) keeping its position.

    The replacement may be empty (the tag goes) or hold commas (it becomes several tags). A
    replacement that duplicates a tag already in the caption is dropped, never the original:
    replacing a tag with itself changes nothing.
    """

    old: str
    new: str
    regex: bool = False

    def _replace(self, tag: str) -> list[str]:
        if self.regex:
            return split_tags(_compile(self.old).sub(self.new, tag))
        return split_tags(self.new) if tag == self.old else [tag]

    def __call__(self, tags: Tags) -> Tags:
        result: list[str] = []
        for tag in tags:
            replaced = self._replace(tag)
            if replaced == [tag]:
                result.append(tag)
                continue
            result.extend(t for t in replaced if t == tag or (t not in tags and t not in result))
        return tuple(result)

    def describe(self) -> str:
        return f"replace {'regex ' if self.regex else ''}{self.old!r} → {self.new!r}"


@dataclass(frozen=True)
class MoveFirst:
    """Move the given tags, where present, to the front in the given order (e.g. the trigger)."""

    tags: Tags

    def __call__(self, tags: Tags) -> Tags:
        first = tuple(t for t in _unique(self.tags) if t in tags)
        return first + tuple(t for t in tags if t not in first)

    def describe(self) -> str:
        return f"move {join_tags(self.tags)} first"


@dataclass(frozen=True)
class SortTags:
    """Sort tags alphabetically, or by dataset frequency (most common first), keeping the first N in place."""

    keep_first: int = 0
    frequency: Counter[str] | None = field(default=None, compare=False)

    def __call__(self, tags: Tags) -> Tags:
        head, tail = tags[:self.keep_first], tags[self.keep_first:]
        if self.frequency is None:
            return head + tuple(sorted(tail, key=lambda t: (t.lower(), t)))
        freq = self.frequency
        return head + tuple(sorted(tail, key=lambda t: (-freq[t], t.lower(), t)))

    def describe(self) -> str:
        how = "by frequency" if self.frequency is not None else "alphabetically"
        return f"sort {how}" + (f", keeping the first {self.keep_first}" if self.keep_first else "")


@dataclass(frozen=True)
class Dedupe:
    """Drop repeated tags, keeping the first; `loose` also treats `red_hair`/`Red Hair` as repeats."""

    loose: bool = False

    def __call__(self, tags: Tags) -> Tags:
        key: Callable[[str], str] = tag_key if self.loose else str
        seen: set[str] = set()
        return tuple(t for t in tags if not (key(t) in seen or seen.add(key(t))))  # type: ignore[func-returns-value]

    def describe(self) -> str:
        return "dedupe" + (" (ignoring case, spaces, underscores)" if self.loose else "")


@dataclass(frozen=True)
class JoinLines:
    """Put a caption written on several lines on one (kohya reads only the first line)."""

    def __call__(self, tags: Tags) -> Tags:
        return tuple(piece.strip() for tag in tags for piece in tag.splitlines() if piece.strip())

    def describe(self) -> str:
        return "join lines"


Operation = AddTags | RemoveTags | ReplaceTag | MoveFirst | SortTags | Dedupe | JoinLines


def skip_reason(f: CaptionFile, operation: Operation) -> str | None:
    """Why a matching caption must not be rewritten by `operation`, or None."""
    if f.unreadable:
        return "not UTF-8 text: left as it is (convert it to UTF-8 first)"
    if f.text and "\n" in f.text and not isinstance(operation, JoinLines):
        return ("on several lines, of which kohya reads only the first: join them first "
                "(`loraprep captions join-lines`)")
    return None


@dataclass(frozen=True)
class Where:
    """Which captions an edit touches: all `having` tags present, none of `lacking`."""

    having: Tags = ()
    lacking: Tags = ()
    include_missing: bool = False  # images without a caption file (only `add` creates one)

    def __call__(self, f: CaptionFile) -> bool:
        if f.image is None or (not f.exists and not self.include_missing):
            return False
        present = set(f.tags)
        return all(t in present for t in self.having) and not any(t in present for t in self.lacking)


@dataclass(frozen=True)
class Change:
    """One caption rewrite: `before` is the file's exact bytes (None: no file yet)."""

    caption: str
    image: str | None
    before: bytes | None
    old: Tags
    new: Tags

    @property
    def after(self) -> bytes:
        return caption_bytes(self.new)


def caption_bytes(tags: Sequence[str]) -> bytes:
    """How an edited caption is written: `a, b, c` and one newline, UTF-8 (as `write_caption` does)."""
    return (join_tags(tags) + "\n").encode("utf-8")


@dataclass(frozen=True)
class EditPlan:
    description: str
    matched: int
    changes: tuple[Change, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (caption, why): matching captions left alone


def plan_edit(dataset: CaptionDataset, operation: Operation, where: Where = Where()) -> EditPlan:
    """Every caption the operation would change (nothing is written), and those it must not touch."""
    changes = []
    skipped = []
    matched = 0
    for f in dataset.files:
        if not where(f):
            continue
        reason = skip_reason(f, operation)
        if reason is not None:
            skipped.append((f.caption, reason))
            continue
        matched += 1
        new = tuple(operation(f.tags))
        if new != f.tags or (not f.exists and new):
            changes.append(Change(f.caption, f.image, f.raw, f.tags, new))
    return EditPlan(operation.describe(), matched, tuple(changes), tuple(skipped))


@dataclass(frozen=True)
class DiffSummary:
    """What an edit does, per tag: how many captions gain it or lose (an occurrence of) it, how many
    were only reordered."""

    files: int
    matched: int
    added: Counter[str]
    removed: Counter[str]
    reordered: int

    def to_dict(self) -> dict:
        return {"files_changed": self.files, "files_matched": self.matched,
                "added": dict(self.added.most_common()), "removed": dict(self.removed.most_common()),
                "reordered": self.reordered}


def summarize(plan: EditPlan) -> DiffSummary:
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    reordered = 0
    for change in plan.changes:
        plus = Counter(change.new) - Counter(change.old)
        minus = Counter(change.old) - Counter(change.new)
        added.update(plus.keys())  # captions gaining the tag, not occurrences
        removed.update(minus.keys())
        if not plus and not minus:
            reordered += 1
    return DiffSummary(len(plan.changes), plan.matched, added, removed, reordered)
