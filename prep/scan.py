"""Folder → image entries: sizes from headers, sidecar captions, kohya repeat folders, problems.

Pixels are never decoded here; 20,000 images scan in seconds. Bad files become `Drop`s with a
reason and the walk goes on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from prep.errors import LoraprepError, UsageError
from prep.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageInfo, is_image_path, read_info
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Drop
from prep.runner import run_step
from prep.naming import shares_sidecars, sidecar_groups
from prep.sidecars import caption_path, read_caption
from prep.walk import SKIPPED_DIRS, walk_images  # noqa: F401  (the one walk every command shares)

# kohya's DreamBooth folder convention: "10_sks woman" = 10 repeats, class tokens "sks woman".
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


class NoImages(LoraprepError):
    """A folder a command should work on holds no image files at all (exit 1: nothing was done)."""

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str], what: str = "nothing was done") -> NoImages:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        return cls(f"{folder} holds no images, so {what}",
                   hint=f"loraprep reads {kinds} files, searching sub-folders (hidden ones and .loraprep/ "
                        "excepted); point it at the folder that holds them")


def require_images(scan: ScanResult, what: str = "nothing was done") -> ScanResult:
    """`scan` unchanged, or NoImages when it found no image file at all (unreadable ones count as
    found: they are reported with their reasons instead)."""
    if not scan.entries and not scan.dropped:
        raise NoImages.in_folder(scan.root, what)
    return scan


def has_images(folder: str | os.PathLike[str]) -> bool:
    """Whether any image file lies under `folder` (stops at the first; nothing is decoded)."""
    return next(walk_images(Path(folder), []), None) is not None


@dataclass(frozen=True)
class RepeatFolder:
    repeats: int
    class_tokens: str
    folder: str  # relative to the scanned root


@dataclass(frozen=True)
class ScanEntry:
    path: Path            # absolute path of the image
    rel: str              # POSIX path relative to the scanned root
    info: ImageInfo
    caption: str | None   # None: no sidecar
    repeat_folder: RepeatFolder | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.info.size

    @property
    def aspect(self) -> float:
        return self.info.width / self.info.height


@dataclass
class ScanResult:
    root: Path
    entries: list[ScanEntry] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    warnings: list[Drop] = field(default_factory=list)

    @property
    def repeat_folders(self) -> list[RepeatFolder]:
        seen: dict[str, RepeatFolder] = {}
        for entry in self.entries:
            if entry.repeat_folder is not None:
                seen.setdefault(entry.repeat_folder.folder, entry.repeat_folder)
        return list(seen.values())


def _repeat_folder(root: Path, image: Path) -> RepeatFolder | None:
    """The innermost `N_name` folder between root and the image, if any."""
    rel_parent = image.parent.relative_to(root)
    parts = rel_parent.parts
    for depth in range(len(parts), 0, -1):
        match = REPEAT_FOLDER.match(parts[depth - 1])
        if match:
            return RepeatFolder(int(match.group(1)), match.group(2).strip(), Path(*parts[:depth]).as_posix())
    return None


def _duplicate_stem_warnings(root: Path, images: list[Path], extension: str) -> list[Drop]:
    return [Drop(image.relative_to(root).as_posix(), "scan",
                 shares_sidecars(group[0].relative_to(root).as_posix(), caption_path(image, extension).name))
            for group in sidecar_groups(images, extension) for image in group[1:]]


def scan_folder(root: str | os.PathLike[str], *, caption_extension: str = DEFAULT_CAPTION_EXTENSION,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, reporter: Reporter = SILENT,
                workers: int = 4) -> ScanResult:
    """Every image under `root` with its header info and caption; unreadable ones are dropped with a reason."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    result = ScanResult(root=root)
    images = list(walk_images(root, result.dropped))
    result.warnings.extend(_duplicate_stem_warnings(root, images, caption_extension))

    def entry(image: Path) -> ScanEntry:
        info = read_info(image, max_pixels=max_pixels)
        return ScanEntry(image, image.relative_to(root).as_posix(), info,
                         read_caption(caption_path(image, caption_extension)), _repeat_folder(root, image))

    step = run_step(images, entry, step="scan", name=lambda p: p.relative_to(root).as_posix(),
                    reporter=reporter, label="scanning", workers=workers)
    result.entries = step.done
    result.dropped.extend(step.dropped)
    return result


