"""Writing caption edits safely, and the one undo journal shared by the bulk commands and the editor.

Every edit, bulk or one tag in the editor, is recorded in `<dataset>/.loraprep/journal/NNNNNN.json`
*before* any caption is written, with every file's exact previous bytes (base64) and new bytes.
The journal is a stack: `undo_last` restores the previous bytes of the newest entry and moves it to
`journal/undone/` (the redo stack); `redo_last` writes its new bytes again and moves it back. A new
edit moves whatever is in `undone/` to `journal/history/`: it can no longer be redone, and is kept.
So `captions undo` after a session in the editor undoes the editor's last edit, and the editor's
`u` after `captions undo` undoes the edit before: one history, whoever wrote it.

Each file is written by a `GuardedWriter`, which leaves it alone if anything else changed it since
it was read, checked again at the moment of the swap and just after; undo and redo likewise touch a
file only while it still holds what the edit left there. Nothing someone else wrote is overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prep.atomic import TEMP_SUFFIX, temp_prefix, write_bytes_atomic
from prep.captions.dataset import STATE_DIR, read_current
from prep.captions.edit import Change, EditPlan
from prep.errors import LoraprepError
from prep.naming import name_max, too_long
from prep.numbered import claim_numbered, temporary_with
from prep.records import is_safe_relative, is_within

JOURNAL_SCHEMA = "loraprep.caption-journal/1"
JOURNAL_DIR = Path(STATE_DIR) / "journal"
UNDONE = "undone"    # undone entries that can be redone, newest undo first (lowest number)
HISTORY = "history"  # undone entries a later edit made impossible to redo


class UndoConflict(LoraprepError):
    """Files changed since the edit being undone; restoring them would lose those changes."""


class JournalPathError(LoraprepError):
    """A journal entry names a caption outside the dataset: undo and redo never write there."""


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
        """The state an entry records; a path that is not relative and inside the dataset (a
        hand-edited entry) is refused here, before undo or redo could write there."""
        caption = str(data["path"])
        if not is_safe_relative(caption):
            raise JournalPathError(f"caption journal names a path outside the dataset: {caption!r}")
        decode = (lambda s: None if s is None else base64.b64decode(s))
        return cls(caption, decode(data["before"]), decode(data["after"]))


@dataclass(frozen=True)
class JournalEntry:
    path: Path
    description: str
    time: str
    files: tuple[FileState, ...]

    @property
    def number(self) -> int:
        return int(self.path.stem)


def _entries(folder: Path) -> list[Path]:
    """The entry files in `folder`, oldest first."""
    try:
        names = [e.name for e in os.scandir(folder) if e.name.endswith(".json") and e.name[:-5].isdigit()]
    except FileNotFoundError:
        return []
    return [folder / name for name in sorted(names, key=lambda n: int(n[:-5]))]


def _entry_bytes(description: str, files: Sequence[FileState]) -> bytes:
    data = {"schema": JOURNAL_SCHEMA, "description": description,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": [f.to_dict() for f in files]}
    return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")


def _retire_redo_stack(folder: Path) -> None:
    """A new edit makes the undone entries impossible to redo: keep them, out of the redo stack."""
    undone = _entries(folder / UNDONE)
    if undone:
        (folder / HISTORY).mkdir(parents=True, exist_ok=True)
        for path in undone:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, folder / HISTORY / path.name)


def record(root: Path, description: str, files: Sequence[FileState]) -> Path:
    """Append a journal entry and return its path.

    The entry is complete on disk (written to a temporary, fsynced) before it gets its number, and
    it takes the number with a hard link, which fails if another process took it first: two
    programs editing the same dataset never overwrite each other's entry (`prep.numbered`).
    """
    folder = journal_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    _retire_redo_stack(folder)
    data = _entry_bytes(description, files)
    existing = [int(p.stem) for sub in ("", UNDONE, HISTORY) for p in _entries(folder / sub)]
    return claim_numbered(folder, max(existing, default=0) + 1, lambda number: data)


def _rewrite(entry: Path, description: str, files: Sequence[FileState]) -> Path | None:
    """Keep only the files an edit really wrote in its entry (none: the entry goes)."""
    if not files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        return None
    write_bytes_atomic(entry, _entry_bytes(description, files))
    return entry


_ENTRY_HINT = "move it out of the journal folder if it was not written by loraprep"


def read_entry(path: Path) -> JournalEntry:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") != JOURNAL_SCHEMA:
            raise ValueError("no caption journal schema")
        return JournalEntry(path, str(data["description"]), str(data["time"]),
                            tuple(FileState.from_dict(f) for f in data["files"]))
    except JournalPathError as exc:
        raise JournalPathError(f"{path}: {exc.message}; nothing was changed", hint=_ENTRY_HINT) from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # binascii.Error is a ValueError
        raise LoraprepError(f"{path} is not a loraprep caption journal entry ({exc})", hint=_ENTRY_HINT) from None


def check_inside(root: Path, entry: JournalEntry) -> None:
    """Refuse an entry any of whose captions a symlink (the file itself, or a folder on its way)
    carries outside the dataset: undo and redo write only inside it."""
    real_root = os.path.realpath(root)
    for state in entry.files:
        real = os.path.realpath(os.path.join(real_root, state.caption))
        if not is_within(real, real_root):
            raise JournalPathError(f"{entry.path}: '{state.caption}' leads outside the dataset to {real} "
                                   "(through a symlink); nothing was changed",
                                   hint="undo and redo write only inside the dataset: remove the link, "
                                        "or restore that caption by hand")


def last_entry(root: Path) -> JournalEntry | None:
    """The newest edit still applied (what `undo_last` would undo)."""
    entries = _entries(journal_dir(root))
    return read_entry(entries[-1]) if entries else None


def next_redo(root: Path) -> JournalEntry | None:
    """The most recently undone edit, if nothing was edited since (what `redo_last` would redo)."""
    entries = _entries(journal_dir(root) / UNDONE)
    return read_entry(entries[0]) if entries else None


# ---- guarded writes


def _read_fd(fd: int) -> bytes:
    parts, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _open_existing(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None


def _read_or_none(path: str) -> bytes | None:
    fd = _open_existing(path)
    if fd is None:
        return None
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _load_renameat2() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2() if sys.platform.startswith("linux") else None
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(first: str, second: str) -> bool:
    """Swap two names atomically (Linux renameat2); False where the system or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), second)


class GuardedWriter:
    """Replaces captions only where they still hold what was read, and loses no one else's write.

    Each new caption is written to a temporary first, then *swapped* with the file atomically
    (Linux `renameat2(RENAME_EXCHANGE)`), so the file that was there is never unlinked unseen: if it
    is not what was read (another program rewrote or renamed over it a moment before), it is swapped
    back. The old file is kept aside until a little later and read again, so an in-place append that
    reached it after the swap is put back too, and that caption reported as left alone. Elsewhere
    the file is re-checked (bytes and inode) right before a plain rename, and read again just after.
    """

    AFTERCHECK = 256  # swapped-out files kept aside at most, to be re-read for late appends

    def __init__(self, root: Path) -> None:
        self.root = root
        self.late: list[str] = []  # captions given back to a late writer after all
        self._aside: list[tuple[str, str, bytes, bytes]] = []  # caption, old file, expected, written

    def __enter__(self) -> GuardedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def write(self, caption: str, expected: bytes | None, data: bytes | None) -> bool:
        """Put `data` (None: remove the file) in place of `expected`; False (nothing written) when
        the caption holds something else."""
        target = os.path.join(self.root, caption)
        if data is None:
            return _remove_guarded(target, expected)
        if _read_or_none(target) != expected:
            return False
        folder, name = os.path.split(target)
        os.makedirs(folder, exist_ok=True)
        tmp = temporary_with(folder, name, data)
        try:
            if expected is None:
                try:
                    os.link(tmp, target)  # creates the caption only if nobody else did meanwhile
                except FileExistsError:
                    return False
                return True
            try:
                swapped = _exchange(tmp, target)
            except FileNotFoundError:
                return False
            if swapped:
                return self._check_swap(caption, target, tmp, expected, data)
            return self._replace_checked(caption, target, tmp, expected, data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _check_swap(self, caption: str, target: str, old: str, expected: bytes, data: bytes) -> bool:
        """`old` now holds what was in place a moment ago: keep ours only if that was `expected`."""
        if _read_or_none(old) != expected:
            if _read_or_none(target) == data:
                _exchange(old, target)  # theirs goes back
            return False
        folder, name = os.path.split(target)
        kept = os.path.join(folder, f"{temp_prefix(name)}aside{os.urandom(4).hex()}{TEMP_SUFFIX}")
        os.rename(old, kept)  # a name `clean_stale_temporaries` knows, should this process be killed
        self._aside.append((caption, kept, expected, data))
        if len(self._aside) > self.AFTERCHECK:
            self._settle(self._aside.pop(0))
        return True

    def _replace_checked(self, caption: str, target: str, tmp: str, expected: bytes, data: bytes) -> bool:
        fd = _open_existing(target)
        if fd is None:
            return False
        try:
            if _read_fd(fd) != expected or os.stat(target).st_ino != os.fstat(fd).st_ino:
                return False
            os.replace(tmp, target)
            late = _read_fd(fd)
        finally:
            os.close(fd)
        if late != expected:
            self._give_back(caption, data, late)
            return False
        return True

    def _settle(self, aside: tuple[str, str, bytes, bytes]) -> None:
        caption, kept, expected, data = aside
        late = _read_or_none(kept)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kept)
        if late is not None and late != expected:
            self._give_back(caption, data, late)

    def _give_back(self, caption: str, data: bytes, late: bytes) -> None:
        """Someone appended to the file we replaced: their bytes win over our edit."""
        self.late.append(caption)
        with GuardedWriter(self.root) as writer:
            writer.write(caption, data, late)

    def finish(self) -> list[str]:
        """Re-read every file kept aside; returns the captions whose edit was given back."""
        while self._aside:
            self._settle(self._aside.pop(0))
        return self.late


def write_all(root: Path, writes: Sequence[tuple[str, bytes | None, bytes | None]]) -> set[str]:
    """Guarded-write every (caption, expected, data); returns the captions that hold `data` now:
    not those that held something else, nor those given back to a late writer when it finished."""
    with GuardedWriter(root) as writer:
        done = [caption for caption, expected, data in writes if writer.write(caption, expected, data)]
    return set(done).difference(writer.late)


def write_guarded(root: Path, caption: str, expected: bytes | None, data: bytes | None) -> bool:
    """Replace one caption with `data` (None: remove it) only if it still holds `expected`."""
    return caption in write_all(root, [(caption, expected, data)])


def _remove_guarded(target: str, expected: bytes | None) -> bool:
    """Remove a caption that still holds `expected` (it is moved aside and checked before it goes)."""
    if expected is None:
        return not os.path.lexists(target)
    if _read_or_none(target) != expected:
        return False
    folder, name = os.path.split(target)
    fd, aside = tempfile.mkstemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        os.replace(target, aside)
    except FileNotFoundError:
        return False
    try:
        if _read_or_none(aside) == expected:
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, target)  # changed in the meantime: put it back, unless a new one appeared
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


# ---- applying, undoing, redoing


def check_nameable(root: Path, captions: Sequence[str]) -> None:
    """Refuse, before the first write, an edit one of whose captions cannot be named on this file
    system (a 250-byte image name with a longer caption extension): nothing is half-applied."""
    limit = name_max(root)
    long = [caption for caption in captions if too_long(caption, limit)]
    if long:
        shown = ", ".join(name[:60] + ("…" if len(name) > 60 else "") for name in long[:3])
        raise LoraprepError(f"{len(long)} caption file name(s) are longer than the file system's {limit}-byte "
                            f"limit: {shown}; nothing was written",
                            hint="shorten those images' names (or use a shorter --caption-extension) and run it again")


@dataclass(frozen=True)
class Written:
    """What a journalled write did: the files it changed, the ones it left alone, its entry."""

    written: tuple[FileState, ...]
    conflicts: tuple[str, ...]  # captions changed by someone else since they were read
    entry: Path | None


def apply_changes(root: Path, description: str, states: Sequence[FileState]) -> Written:
    """Journal, then write, every state whose file still holds its `before` bytes (none: no entry).

    Files are checked once before the entry is written and again by each guarded write; the entry
    is then trimmed to the files really written, so undo never meets a file this edit skipped.
    """
    check_nameable(root, [state.caption for state in states])
    ready, conflicts = [], []
    for state in states:
        (ready if read_current(root, state.caption) == state.before else conflicts).append(state)
    if not ready:
        return Written((), tuple(s.caption for s in conflicts), None)
    entry = record(root, description, ready)
    done = write_all(root, [(state.caption, state.before, state.after) for state in ready])
    written = [state for state in ready if state.caption in done]
    conflicts += [state for state in ready if state.caption not in done]
    if len(written) < len(ready):
        entry = _rewrite(entry, description, written)
    return Written(tuple(written), tuple(s.caption for s in conflicts), entry)


@dataclass(frozen=True)
class ApplyResult:
    written: tuple[Change, ...]
    conflicts: tuple[str, ...]  # captions changed on disk since loading, or during the write: left alone
    entry: Path | None


def apply_plan(root: Path, plan: EditPlan, *, dry_run: bool = False) -> ApplyResult:
    """Journal, then write, every change whose file is unchanged since it was loaded."""
    if dry_run:
        current = [read_current(root, c.caption) == c.before for c in plan.changes]
        return ApplyResult(tuple(c for c, ok in zip(plan.changes, current) if ok),
                           tuple(c.caption for c, ok in zip(plan.changes, current) if not ok), None)
    result = apply_changes(root, plan.description, [FileState(c.caption, c.before, c.after) for c in plan.changes])
    done = {s.caption for s in result.written}
    return ApplyResult(tuple(c for c in plan.changes if c.caption in done), result.conflicts, result.entry)


@dataclass(frozen=True)
class UndoResult:
    entry: JournalEntry | None
    restored: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()  # already held the bytes being restored
    conflicts: tuple[str, ...] = field(default=())  # changed since the edit: restored only with force
    skipped: tuple[str, ...] = ()  # changed while undoing: left alone


def _revert(root: Path, entry: JournalEntry, *, forward: bool, force: bool, dry_run: bool,
            destination: Path) -> UndoResult:
    """Put an entry's `before` bytes back (`forward`: its `after` bytes) where files allow it."""
    check_inside(root, entry)
    restore, unchanged, conflicts = [], [], []
    for state in entry.files:
        now, then = (state.before, state.after) if forward else (state.after, state.before)
        current = read_current(root, state.caption)
        if current == now:
            restore.append((state.caption, now, then))
        elif current == then:
            unchanged.append(state.caption)
        else:
            conflicts.append(state.caption)
            if force:
                restore.append((state.caption, current, then))
    if conflicts and not force:
        shown = ", ".join(conflicts[:5]) + (" …" if len(conflicts) > 5 else "")
        verb = "redone" if forward else "undone"
        raise UndoConflict(f"{len(conflicts)} caption(s) changed since '{entry.description}': {shown}",
                           hint=f"nothing was {verb}; `loraprep captions {'redo' if forward else 'undo'} --force` "
                                "restores them anyway")
    if dry_run:
        return UndoResult(entry, tuple(c for c, _, _ in restore), tuple(unchanged), tuple(conflicts))
    done = write_all(root, restore)
    restored = [caption for caption, _, _ in restore if caption in done]
    skipped = [caption for caption, _, _ in restore if caption not in done]
    destination.mkdir(parents=True, exist_ok=True)
    os.replace(entry.path, destination / entry.path.name)
    return UndoResult(entry, tuple(restored), tuple(unchanged), tuple(conflicts), tuple(skipped))


def undo_last(root: Path, *, force: bool = False, dry_run: bool = False) -> UndoResult:
    """Restore the exact previous bytes of the newest journalled edit (the editor's or a command's).

    Refuses (UndoConflict) when a file changed since that edit, unless `force`.
    """
    entry = last_entry(root)
    if entry is None:
        return UndoResult(None)
    return _revert(root, entry, forward=False, force=force, dry_run=dry_run,
                   destination=journal_dir(root) / UNDONE)


def redo_last(root: Path, *, force: bool = False, dry_run: bool = False) -> UndoResult:
    """Write again what the most recently undone edit wrote (only if nothing was edited since)."""
    entry = next_redo(root)
    if entry is None:
        return UndoResult(None)
    return _revert(root, entry, forward=True, force=force, dry_run=dry_run, destination=journal_dir(root))
