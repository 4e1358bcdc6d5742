"""Writing caption edits safely, and the undo journal that makes every bulk edit reversible.

Each bulk edit is recorded in `<dataset>/.loraprep/journal/NNNNNN.json` *before* any caption is
written, with every file's exact previous bytes (base64) and new bytes. `undo_last` puts the
previous bytes back only where a file still holds what the edit wrote, so undo is byte-exact and
never clobbers a later hand edit. A caption that changed on disk since it was loaded is skipped
with a warning rather than overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from prep.atomic import write_bytes_atomic, write_text_atomic
from prep.captions.dataset import STATE_DIR, read_current
from prep.captions.edit import Change, EditPlan
from prep.errors import LoraprepError

JOURNAL_SCHEMA = "loraprep.caption-journal/1"
JOURNAL_DIR = Path(STATE_DIR) / "journal"


class UndoConflict(LoraprepError):
    """Files changed since the edit being undone; restoring them would lose those changes."""


def journal_dir(root: Path) -> Path:
    return Path(root) / JOURNAL_DIR


@dataclass(frozen=True)
class FileState:
    """A caption's bytes before and after an edit (None: the file did not / does not exist)."""

    caption: str
    before: bytes | None
    after: bytes | None

    def to_dict(self) -> dict:
        encode = (lambda b: None if b is None else base64.b64encode(b).decode("ascii"))
        return {"path": self.caption, "before": encode(self.before), "after": encode(self.after)}

    @classmethod
    def from_dict(cls, data: dict) -> FileState:
        decode = (lambda s: None if s is None else base64.b64decode(s))
        return cls(str(data["path"]), decode(data["before"]), decode(data["after"]))


@dataclass(frozen=True)
class JournalEntry:
    path: Path
    description: str
    time: str
    files: tuple[FileState, ...]


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))


def record(root: Path, description: str, files: list[FileState]) -> Path:
    """Append a journal entry (written atomically) and return its path."""
    folder = journal_dir(root)
    existing = _entries(folder) + _entries(folder / "undone")
    number = max((int(p.stem) for p in existing), default=0) + 1
    path = folder / f"{number:06d}.json"
    data = {"schema": JOURNAL_SCHEMA, "description": description,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": [f.to_dict() for f in files]}
    write_text_atomic(path, json.dumps(data, ensure_ascii=False) + "\n")
    return path


def read_entry(path: Path) -> JournalEntry:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != JOURNAL_SCHEMA:
        raise LoraprepError(f"{path} is not a loraprep caption journal entry",
                            hint="remove it if it was not written by loraprep")
    return JournalEntry(path, str(data["description"]), str(data["time"]),
                        tuple(FileState.from_dict(f) for f in data["files"]))


def last_entry(root: Path) -> JournalEntry | None:
    entries = _entries(journal_dir(root))
    return read_entry(entries[-1]) if entries else None


def put_bytes(root: Path, caption: str, data: bytes | None) -> None:
    """Write a caption atomically, or remove it when `data` is None."""
    target = Path(root) / caption
    if data is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    else:
        write_bytes_atomic(target, data)


def write_guarded(root: Path, caption: str, expected: bytes | None, data: bytes | None) -> bool:
    """Write only if the file still holds `expected` (what we loaded); False means it changed on disk."""
    if read_current(root, caption) != expected:
        return False
    put_bytes(root, caption, data)
    return True


@dataclass(frozen=True)
class ApplyResult:
    written: tuple[Change, ...]
    conflicts: tuple[str, ...]  # captions changed on disk since loading: left alone
    entry: Path | None


def apply_plan(root: Path, plan: EditPlan, *, dry_run: bool = False) -> ApplyResult:
    """Journal, then write, every change whose file is unchanged since it was loaded."""
    ready: list[Change] = []
    conflicts: list[str] = []
    for change in plan.changes:
        if read_current(root, change.caption) == change.before:
            ready.append(change)
        else:
            conflicts.append(change.caption)
    if dry_run or not ready:
        return ApplyResult(tuple(ready), tuple(conflicts), None)
    entry = record(root, plan.description, [FileState(c.caption, c.before, c.after) for c in ready])
    for change in ready:
        put_bytes(root, change.caption, change.after)
    return ApplyResult(tuple(ready), tuple(conflicts), entry)


@dataclass(frozen=True)
class UndoResult:
    entry: JournalEntry | None
    restored: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()  # already held their previous bytes
    conflicts: tuple[str, ...] = field(default=())


def undo_last(root: Path, *, force: bool = False, dry_run: bool = False) -> UndoResult:
    """Restore the exact previous bytes of the last journalled edit.

    Refuses (UndoConflict) when a file changed since that edit, unless `force`.
    """
    entry = last_entry(root)
    if entry is None:
        return UndoResult(None)
    restore, unchanged, conflicts = [], [], []
    for state in entry.files:
        current = read_current(root, state.caption)
        if current == state.after:
            restore.append(state)
        elif current == state.before:
            unchanged.append(state.caption)
        else:
            conflicts.append(state.caption)
            if force:
                restore.append(state)
    if conflicts and not force:
        shown = ", ".join(conflicts[:5]) + (" …" if len(conflicts) > 5 else "")
        raise UndoConflict(f"{len(conflicts)} caption(s) changed since '{entry.description}': {shown}",
                           hint="nothing was undone; `loraprep captions undo --force` restores them anyway")
    if not dry_run:
        for state in restore:
            put_bytes(root, state.caption, state.before)
        undone = entry.path.parent / "undone"
        undone.mkdir(exist_ok=True)
        os.replace(entry.path, undone / entry.path.name)
    return UndoResult(entry, tuple(s.caption for s in restore), tuple(unchanged), tuple(conflicts))
