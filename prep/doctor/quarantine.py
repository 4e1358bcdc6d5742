"""Setting images aside, reversibly: `doctor --apply` moves, `doctor --restore` moves back.

Nothing is deleted. Each apply is one journal entry, `DS/.loraprep/quarantine/journal/NNNNNN.json`,
written complete *before* any file moves, listing every move with the file's sha256; it takes its
number with a hard link (`prep.numbered`, as the caption journal does), so two runs at once never
share a number or a folder. The files go to `DS/.loraprep/quarantine/NNNNNN/<their path>` with
their caption sidecar and `.loraprep.json` (scans skip `.loraprep/`, so the dataset no longer holds
them). `restore_last` moves the last
entry's files back only where the quarantined file is still the one moved (same hash) and nothing
has taken its old place; anything else is a conflict, and nothing is restored unless forced
(then the conflicting files stay where they are). The same guarantees as the caption journal
(`prep.captions.journal`), for moves instead of rewritten bytes: an image is never held in JSON.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prep.atomic import atomic_open, write_bytes_atomic
from prep.captions.dataset import STATE_DIR
from prep.doctor.report import QUARANTINE_KINDS, DoctorReport
from prep.errors import LoraprepError, UsageError
from prep.images import is_image_path, sha256_file
from prep.subjectmask import mask_path
from prep.numbered import claim_numbered
from prep.records import DEFAULT_CAPTION_EXTENSION, is_safe_relative
from prep.sidecars import caption_path, meta_path

SCHEMA = "loraprep.quarantine-journal/1"
QUARANTINE_DIR = Path(STATE_DIR) / "quarantine"
JOURNAL_DIR = QUARANTINE_DIR / "journal"


class RestoreConflict(LoraprepError):
    """Quarantined files changed, or their old places are taken: restoring would lose something."""


@dataclass(frozen=True)
class Move:
    """One file set aside: from `source` to `target` (both relative to the dataset, POSIX)."""

    source: str
    target: str
    sha256: str

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict) -> Move:
        move = cls(str(data["from"]), str(data["to"]), str(data["sha256"]))
        if not (is_safe_relative(move.source) and is_safe_relative(move.target)):
            raise LoraprepError(f"quarantine journal names a path outside the dataset: {move.source} → {move.target}")
        return move


@dataclass(frozen=True)
class Entry:
    path: Path
    description: str
    time: str
    moves: tuple[Move, ...]


@dataclass(frozen=True)
class QuarantineResult:
    entry: Path | None
    moved: tuple[Move, ...]
    images: tuple[str, ...]     # the images set aside (sidecars travel with them)
    missing: tuple[str, ...]    # asked for but no longer there: left alone


@dataclass(frozen=True)
class RestoreResult:
    entry: Entry | None
    restored: tuple[Move, ...] = ()
    unchanged: tuple[Move, ...] = ()   # already back where they were
    conflicts: tuple[Move, ...] = ()


def journal_dir(root: Path) -> Path:
    return Path(root) / JOURNAL_DIR


def _numbers(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())


def _next_number(root: Path) -> int:
    folder = journal_dir(root)
    return max(_numbers(folder) + _numbers(folder / "undone"), default=0) + 1


def _companions(root: Path, image: str, caption_extension: str, moving: set[str]) -> list[str]:
    """The image and the sidecars that belong to it, relative to `root`. A caption shared with an
    image of the same name that stays (`photo.jpg` set aside, `photo.png` kept) stays with it."""
    path = root / image
    staying = [p for p in path.parent.glob(glob.escape(path.stem) + ".*")
               if p.stem == path.stem and is_image_path(p) and p != path
               and p.relative_to(root).as_posix() not in moving]
    files = [image]
    if not staying:
        for sidecar in (caption_path(path, caption_extension), meta_path(path), mask_path(path)):
            if sidecar.is_file():
                files.append(sidecar.relative_to(root).as_posix())
    return files


def _move(root: Path, source: str, target: str) -> None:
    """Rename within the dataset; across file systems (a symlinked sub-folder) copy, fsync, unlink."""
    src, dst = root / source, root / target
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(src, "rb") as reader, atomic_open(dst, "wb") as writer:
            while block := reader.read(1 << 20):
                writer.write(block)
        os.unlink(src)


def _document(description: str, moves: Sequence[Move]) -> bytes:
    document = {"schema": SCHEMA, "description": description, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "moves": [m.to_dict() for m in moves]}
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _planned(files: dict[str, str], number: int) -> tuple[Move, ...]:
    """Each file's move into quarantine folder `number` ({path: sha256} in, moves out)."""
    folder = (QUARANTINE_DIR / f"{number:06d}").as_posix()
    return tuple(Move(f, f"{folder}/{f}", digest) for f, digest in files.items())


def quarantine(root: str | os.PathLike[str], images: Sequence[str], description: str, *,
               caption_extension: str = DEFAULT_CAPTION_EXTENSION) -> QuarantineResult:
    """Move `images` (paths relative to `root`) and their sidecars into the quarantine, journalled.

    The entry takes its number with a hard link (`prep.numbered`), so two runs at once never share
    a number or a folder. A file another run moved away first is left out, and the entry is
    rewritten to list only the moves made.
    """
    root = Path(root)
    for image in images:
        if not is_safe_relative(image):
            raise UsageError(f"cannot quarantine {image}: not a path inside {root}")
    present = [i for i in images if (root / i).is_file()]
    if not present:
        return QuarantineResult(None, (), (), tuple(images))
    files = _hashes(root, present, caption_extension)
    if not files:
        return QuarantineResult(None, (), (), tuple(images))
    folder = journal_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    entry = claim_numbered(folder, _next_number(root), lambda number: _document(description, _planned(files, number)))
    planned = _planned(files, int(entry.stem))
    moved = tuple(move for move in planned if _move_present(root, move))
    if len(moved) < len(planned):
        if moved:
            write_bytes_atomic(entry, _document(description, moved))
        else:
            os.unlink(entry)
    done = {m.source for m in moved}
    return QuarantineResult(entry if moved else None, moved, tuple(i for i in present if i in done),
                            tuple(i for i in images if i not in done))


def _hashes(root: Path, images: Sequence[str], caption_extension: str) -> dict[str, str]:
    """{path: sha256} of each image and its sidecars, leaving out what vanished meanwhile (an image
    gone takes its sidecars out with it)."""
    moving, files = set(images), {}
    for image in images:
        group = _companions(root, image, caption_extension, moving)
        for path in group:
            try:
                files[path] = sha256_file(root / path)
            except FileNotFoundError:
                if path == image:
                    break
    return files


def _move_present(root: Path, move: Move) -> bool:
    """Make `move`; False when its file is gone already (another run set it aside first)."""
    try:
        _move(root, move.source, move.target)
    except FileNotFoundError:
        if (root / move.source).exists():
            raise
        return False
    return True


def read_entry(path: Path) -> Entry:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        return Entry(path, str(data["description"]), str(data["time"]),
                     tuple(Move.from_dict(m) for m in data["moves"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise LoraprepError(f"{path} is not a loraprep quarantine journal entry ({exc})",
                            hint="move it out of the journal folder if it was not written by loraprep") from exc


def last_entry(root: str | os.PathLike[str]) -> Entry | None:
    numbers = _numbers(journal_dir(Path(root)))
    return read_entry(journal_dir(Path(root)) / f"{numbers[-1]:06d}.json") if numbers else None


def _state(root: Path, move: Move) -> str:
    """"ready" to move back, "back" already, or "conflict"."""
    source, target = root / move.source, root / move.target
    if target.is_file() and not source.exists() and sha256_file(target) == move.sha256:
        return "ready"
    if source.is_file() and not target.exists() and sha256_file(source) == move.sha256:
        return "back"
    return "conflict"


def _prune_empty(path: Path, stop: Path) -> None:
    """Remove the now empty folders a restored file leaves in the quarantine (up to `stop`)."""
    folder = path.parent
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        folder = folder.parent


def restore_last(root: str | os.PathLike[str], *, force: bool = False, dry_run: bool = False) -> RestoreResult:
    """Move the last quarantine's files back where they were.

    Refuses (RestoreConflict) when a quarantined file changed or its old place is taken, unless
    `force`, which restores the others and leaves those alone. The entry then moves to
    `journal/undone/`, so the next call restores the quarantine before it.
    """
    root = Path(root)
    entry = last_entry(root)
    if entry is None:
        return RestoreResult(None)
    states = {move: _state(root, move) for move in entry.moves}
    conflicts = tuple(m for m, s in states.items() if s == "conflict")
    if conflicts and not force:
        shown = ", ".join(m.source for m in conflicts[:5]) + (" …" if len(conflicts) > 5 else "")
        raise RestoreConflict(f"{len(conflicts)} file(s) from '{entry.description}' cannot go back: {shown}",
                              hint="a file of that name is in the dataset again, or the quarantined copy changed; "
                                   "nothing was restored. `--force` restores the rest and leaves these")
    ready = tuple(m for m, s in states.items() if s == "ready")
    if not dry_run:
        for move in ready:
            _move(root, move.target, move.source)
            _prune_empty(root / move.target, root / QUARANTINE_DIR)
        undone = entry.path.parent / "undone"
        undone.mkdir(exist_ok=True)
        os.replace(entry.path, undone / entry.path.name)
    return RestoreResult(entry, ready, tuple(m for m, s in states.items() if s == "back"), conflicts)


def set_aside(report: DoctorReport, kinds: Sequence[str] = ("duplicates",), *,
              caption_extension: str = DEFAULT_CAPTION_EXTENSION) -> QuarantineResult:
    """`doctor --apply`: quarantine what `report` found of the chosen kinds (by default the extra
    copies of each duplicate group; the copy kept is never moved)."""
    unknown = [k for k in kinds if k not in QUARANTINE_KINDS]
    if unknown:
        raise UsageError(f"cannot quarantine '{unknown[0]}'", hint=f"choose from {', '.join(QUARANTINE_KINDS)}")
    images = report.quarantine_paths(tuple(kinds))
    description = f"doctor --apply --quarantine {','.join(kinds)}: {len(images)} image(s)"
    return quarantine(report.root, images, description, caption_extension=caption_extension)
