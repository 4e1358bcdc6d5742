"""Names that never make two images share one sidecar.

An image's caption (`photo.txt`) and metadata (`photo.loraprep.json`) are named from its stem, so
`a.png` and `a.jpg` in one folder share both: kohya trains the two pictures on one caption, and a
step writing `a.loraprep.json` for one overwrites the other's source and crop box. Steps that
write new images (crop, clean --out, prep's copy) name each source's outputs from a stem unique
in its folder: a source sharing its stem with another keeps its extension in it (`a_png-face.png`,
`a_jpg-face.jpg`), and the run says so, naming both. Commands that read a dataset report the
images that already share sidecars (`sidecar_groups`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from prep.sidecars import META_SUFFIX, caption_path


def shares_sidecars(other: str, caption: str) -> str:
    """Why an image sharing its caption and metadata files with `other` cannot be handled alone."""
    stem = caption.rpartition(".")[0]
    return (f"shares caption file {caption} (and {stem}{META_SUFFIX}) with {other}: one caption cannot "
            "describe two pictures; rename one of them (e.g. keep its extension in the name)")


def sidecar_groups(images: Iterable[Path], extension: str) -> list[list[Path]]:
    """Images that share one caption file, in groups of two or more (walk order kept)."""
    by_caption: dict[Path, list[Path]] = {}
    for image in images:
        by_caption.setdefault(caption_path(image, extension), []).append(image)
    return [group for group in by_caption.values() if len(group) > 1]


@dataclass(frozen=True)
class Renamed:
    """Sources of one folder that share a stem, and the stems their outputs get instead. Their
    caption and metadata files are theirs together, so no output takes either: which picture a
    caption was written for cannot be told."""

    folder: PurePath
    stems: dict[str, str]  # source file name → output stem

    @property
    def sources(self) -> list[PurePath]:
        return [self.folder / name for name in self.stems]

    def message(self, outputs: str) -> str:
        names = sorted(self.stems)
        shown = " and ".join(names) if len(names) == 2 else ", ".join(names)
        where = "" if str(self.folder) in ("", ".") else f" in {self.folder.as_posix()}"
        stem = PurePath(names[0]).stem
        given = ", ".join(f"{self.stems[name]}… ({name})" for name in names)
        return (f"{shown}{where} share the name '{stem}', so one caption file and one metadata file: their "
                f"{outputs} are named {given}, and take neither file (whose picture it describes cannot be "
                "told); caption them anew")


def output_stems(sources: Sequence[PurePath]) -> tuple[dict[PurePath, str], list[Renamed]]:
    """The stem each source's outputs are named from (sources relative to their root), unique per
    folder even where case is ignored (on such a disk `A-face.png` is `a-face.png`), and one
    `Renamed` per group of sources that had to give up their plain stem."""
    groups: dict[tuple[PurePath, str], list[PurePath]] = {}
    for source in sources:
        groups.setdefault((source.parent, source.stem.casefold()), []).append(source)
    stems: dict[PurePath, str] = {}
    taken: dict[PurePath, set[str]] = {}
    for (folder, key), group in groups.items():  # a source alone keeps its stem, before any renaming
        if len(group) == 1:
            stems[group[0]] = group[0].stem
            taken.setdefault(folder, set()).add(key)
    renamed = []
    for (folder, _), group in sorted(groups.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if len(group) == 1:
            continue
        used = taken.setdefault(folder, set())
        given = {}
        for source in sorted(group):
            stem = _free(f"{source.stem}_{source.suffix.lstrip('.').lower() or 'noext'}", used)
            used.add(stem.casefold())
            stems[source] = given[source.name] = stem
        renamed.append(Renamed(folder, given))
    return stems, renamed


def _free(stem: str, used: set[str]) -> str:
    candidate, number = stem, 1
    while candidate.casefold() in used:
        number += 1
        candidate = f"{stem}_{number}"
    return candidate


NAME_MAX = 255


def name_max(folder: str | os.PathLike[str]) -> int:
    """The longest file name (in bytes) the file system holding `folder` allows."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def too_long(path: str | os.PathLike[str], limit: int = NAME_MAX) -> bool:
    """Whether the last part of `path` is longer than the file system can name (in bytes)."""
    return len(os.fsencode(os.path.basename(path))) > limit


def sidecar_problem(image: Path, extension: str, limit: int = NAME_MAX) -> str | None:
    """Why the caption or metadata file of `image` cannot be written (None: both can be named)."""
    for sidecar in (caption_path(image, extension), image.with_name(image.stem + META_SUFFIX)):
        if too_long(sidecar, limit):
            size = len(os.fsencode(sidecar.name))
            shown = sidecar.name if len(sidecar.name) <= 48 else f"{sidecar.name[:24]}…{sidecar.name[-20:]}"
            return (f"file name too long: its sidecar {shown} would be {size} bytes, over the {limit}-byte "
                    "limit of the file system; shorten the image's name")
    return None


def with_own_sidecars(root: Path, images: Sequence[Path], extension: str, step: str,
                      problems: list, *, prefix: str = "") -> list[Path]:
    """`images` less those a step must not write sidecars for, each added to `problems` with why:
    images sharing a caption file with another (one caption cannot describe both, and writing it
    for one would overwrite the other's), and images whose sidecar names are too long to exist.
    Checked before the first write, so a run never stops half-way on them."""
    from prep.records import Drop

    left_out: dict[Path, str] = {}
    for group in sidecar_groups(images, extension):
        for image in group:
            other = group[1] if image == group[0] else group[0]
            left_out[image] = shares_sidecars(other.relative_to(root).as_posix(), caption_path(image, extension).name)
    limit = name_max(root)
    for image in images:
        if image not in left_out and (problem := sidecar_problem(image, extension, limit)) is not None:
            left_out[image] = problem
    problems.extend(Drop(image.relative_to(root).as_posix(), step, prefix + reason) for image, reason in left_out.items())
    return [image for image in images if image not in left_out]


def check_output_name(target: Path, extension: str) -> None:
    """Refuse, before anything is written for it, an output that could not be named, or whose
    caption or metadata file could not (a 250-byte source name): the image alone would be half a
    result."""
    from prep.errors import BadImage

    if too_long(target):
        raise BadImage.at(target, f"file name too long: {len(os.fsencode(target.name))} bytes, over the "
                                  f"{NAME_MAX}-byte limit of the file system; shorten the source's name")
    if (problem := sidecar_problem(target, extension)) is not None:
        raise BadImage.at(target, problem)
