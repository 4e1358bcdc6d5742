"""The one walk of a dataset that every command shares: which folders and files belong to it.

A dataset is the tree of folders under its root, less hidden ones (`.loraprep/` keeps journals
and backups) and `__pycache__`. A folder *link* is never entered:

- one whose target lies outside the root (`DS/linked -> /elsewhere/dir`, `DS/up -> ..`) would let
  a command tag, count, clean or move files that belong to no dataset (and `prep DS --out
  ../DS_out` would copy its own output forever): it is listed with its reason;
- one back to a folder above it is a loop, listed too, as is one into a hidden folder;
- one to another folder of the dataset adds nothing: the walk reaches that folder under its own
  name, and entering it again would count its images twice under two names.

Image *file* links are kept: they are only read, and every write replaces the link itself
(`prep.atomic`), never its target; the manifest refuses those that lead outside, since training
reads nothing but the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prep.errors import UsageError
from prep.images import IMAGE_EXTENSIONS
from prep.records import Drop, is_within
from prep.subjectmask import is_mask_name

# Folders loraprep itself writes inside a dataset (journals, backups) are not part of it.
SKIPPED_DIRS = frozenset({".loraprep", "__pycache__", ".git"})
STEP = "scan"
OUTSIDE_HINT = "copy that folder into the dataset (`cp -rL`) or run loraprep on it directly"


def hidden(name: str) -> bool:
    """Names the walk never looks into: dot-files and -folders, and loraprep's own folders."""
    return name.startswith(".") or name in SKIPPED_DIRS


@dataclass(frozen=True)
class Folder:
    """One folder of the dataset and the names of what in it is not a folder (file links too)."""

    path: Path
    rel: str                 # POSIX, relative to the root; "" for the root itself
    files: tuple[str, ...]   # sorted, hidden names left out


def folder_link_problem(link: str, real_parent: str, real_root: str) -> str | None:
    """Why the walk does not enter the folder link `link` (in the folder whose real path is
    `real_parent`), or None when its target is a folder of the dataset reached anyway."""
    target = os.path.realpath(link)
    if is_within(real_root, target) and target != real_root:
        return f"symlink loop: the folder link leads back to {target}, which holds the dataset: not entered"
    if not is_within(target, real_root):
        return f"folder link to {target} leads outside the dataset folder: not entered; {OUTSIDE_HINT}"
    inside = os.path.relpath(target, real_root)
    shown = "." if inside == "." else Path(inside).as_posix()
    if is_within(real_parent, target):
        return f"symlink loop: the folder link leads back to '{shown}', a folder above it: not entered"
    if any(hidden(part) for part in Path(inside).parts):
        return f"folder link into the hidden folder '{shown}': not entered"
    return None


class _Walk:
    """One walk's state: the root's real path, the folders already listed, the problems found."""

    def __init__(self, root: Path, problems: list[Drop]) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.problems = problems
        self.seen: set[tuple[int, int]] = set()

    def entries(self, folder: Path, rel: str) -> list[tuple[str, bool]]:
        """(name, is a folder to enter) for every child the dataset holds, sorted by name; folder
        links are left out (and listed when they lead outside, loop or hide)."""
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in self.seen:  # a bind mount of an ancestor
                self.problems.append(Drop(rel or ".", STEP, "symlink loop: folder already visited"))
                return []
            self.seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(folder) as listing:
                children = sorted(listing, key=_name)
        except OSError as exc:
            self.problems.append(Drop(rel or ".", STEP, f"cannot list folder: {exc.strerror or exc}"))
            return []
        real_folder = os.path.join(self.real_root, rel) if rel else self.real_root
        found = []
        for child in children:
            name = child.name
            if name.startswith(".") or name in SKIPPED_DIRS:
                continue
            try:
                is_dir = child.is_dir()  # follows links
            except OSError as exc:
                self.problems.append(Drop(_join(rel, name), STEP, f"cannot stat: {exc.strerror or exc}"))
                continue
            if is_dir and child.is_symlink():
                reason = folder_link_problem(child.path, real_folder, self.real_root)
                if reason is not None:
                    self.problems.append(Drop(_join(rel, name), STEP, reason))
                continue
            found.append((name, is_dir))
        return found

    def images(self, folder: Path, rel: str) -> Iterator[Path]:
        for name, is_dir in self.entries(folder, rel):
            if is_dir:
                yield from self.images(folder / name, _join(rel, name))
            elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not is_mask_name(name):
                yield folder / name  # a NAME.mask.png is its image's subject mask, not an image

    def folders(self, folder: Path, rel: str) -> Iterator[Folder]:
        entries = self.entries(folder, rel)
        yield Folder(folder, rel, tuple(name for name, is_dir in entries if not is_dir))
        for name, is_dir in entries:
            if is_dir:
                yield from self.folders(folder / name, _join(rel, name))


def _name(entry: os.DirEntry) -> str:
    return entry.name


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def walk_images(root: str | os.PathLike[str], problems: list[Drop]) -> Iterator[Path]:
    """Image files under `root` in name order (sub-folders in place), never through a folder link;
    folders that could not be walked, and links that were not entered, are added to `problems`."""
    root = Path(root)
    return _Walk(root, problems).images(root, "")


def walk_folders(root: str | os.PathLike[str], problems: list[Drop]) -> Iterator[Folder]:
    """Every folder of the dataset under `root` (the root first, then each sub-folder's tree in name
    order) with the names of its files; the same folders `walk_images` finds images in."""
    root = Path(root)
    return _Walk(root, problems).folders(root, "")


def copy_ignoring(root: str | os.PathLike[str]):
    """A `shutil.copytree` ignore function that copies a dataset as the walk sees it: hidden names
    and folder links left behind (a link out of `root` or back above it would copy the world)."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {name for name in names
                if hidden(name) or (os.path.islink(os.path.join(folder, name))
                                    and os.path.isdir(os.path.join(folder, name)))}

    return ignore


def check_separate(source: str | os.PathLike[str], out: str | os.PathLike[str], *, option: str = "--out",
                   what: str = "the source folder") -> None:
    """Refuse an output folder inside the input, or an input inside the output (also through
    links: both are compared once resolved), before anything is written: the walk of the input
    would meet its own output, and the output would overwrite files beside the input."""
    real_source, real_out = os.path.realpath(source), os.path.realpath(out)
    if is_within(real_out, real_source):
        raise UsageError(f"{option} {out} is inside {what} {source}" + _resolved(out, real_out),
                         hint="write to a separate folder beside it; sources are never modified")
    if is_within(real_source, real_out):
        raise UsageError(f"{what} {source} is inside {option} {out}" + _resolved(source, real_source),
                         hint=f"choose an {option} folder beside {what}, not above it")


def _resolved(given: str | os.PathLike[str], real: str) -> str:
    return "" if os.path.abspath(given) == real else f" (it resolves to {real})"
