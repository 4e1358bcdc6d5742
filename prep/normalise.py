"""Copy source images into a dataset folder, upright and in a mode every step can read.

Used by `loraprep prep` when cropping is skipped: originals are never touched; upright RGB JPEGs
are copied byte for byte, everything else is re-encoded losslessly as PNG (alpha kept for `clean`).
A copy's caption follows its source's only while it holds what this step wrote (prep.carrycaption).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prep.atomic import atomic_open
from prep.carrycaption import Carry, carry_caption, plan_carry, settle_edited
from prep.images import DEFAULT_MAX_PIXELS, open_image, read_info, save_image_atomic, sha256_file
from prep.naming import Renamed, check_output_name, output_stems
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Source, relative_to_base
from prep.runner import StepResult, run_step
from prep.scan import walk_images
from prep.sidecars import caption_path, read_caption, read_meta, update_meta

STEP = "copy"


@dataclass(frozen=True)
class NormaliseOptions:
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    force: bool = False
    workers: int = 2
    overwrite_captions: bool = False  # replace copies' captions edited since they were copied (journalled)


@dataclass(frozen=True)
class Copied:
    target: Path
    edited_caption: Carry | None = None  # the copy's caption, edited since it was copied: kept


@dataclass
class NormaliseResult(StepResult[Path]):
    captions_kept: list[Path] = field(default_factory=list)
    captions_replaced: list[Path] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # sources sharing a stem, copied under new names


def _target(src_root: Path, image: Path, out: Path, copy_bytes: bool, stem: str | None = None) -> Path:
    """The copy's path: the source's, under `out`, named from `stem` (unique in its folder, see
    prep.naming: `anim.gif` and `anim.webp` must not both become `anim.png`)."""
    rel = image.relative_to(src_root)
    return out / rel.parent / ((stem or rel.stem) + (image.suffix.lower() if copy_bytes else ".png"))


def normalise_one(image: Path, src_root: Path, out: Path, options: NormaliseOptions, stem: str | None = None,
                  shared: bool = False) -> Copied:
    """Copy one image (once: a copy of this exact source is kept); `shared`: its caption file is
    another source's too (prep.naming), so the copy does not take it."""
    info = read_info(image, max_pixels=options.max_pixels)
    copy_bytes = info.format == "JPEG" and info.orientation == 1 and info.mode == "RGB" and info.frames == 1
    target = _target(src_root, image, out, copy_bytes, stem)
    check_output_name(target, options.caption_extension)
    digest = sha256_file(image)
    done = not options.force and target.exists() and read_meta(target).get("source", {}).get("sha256") == digest
    if not done:  # (idempotent: an image already copied from this exact source is not copied again)
        if copy_bytes:
            with open(image, "rb") as source, atomic_open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
        else:
            save_image_atomic(open_image(image, max_pixels=options.max_pixels), target)
        update_meta(target, source=Source(relative_to_base(image, out), digest).to_dict(),
                    normalise={"copied": copy_bytes, "from_mode": info.mode, "orientation": info.orientation})
    caption = None if shared else read_caption(caption_path(image, options.caption_extension))
    if caption is None:
        return Copied(target)
    carry = plan_carry(out, target, caption, options.caption_extension, STEP)
    return Copied(target, carry_caption(out, carry, STEP))


def normalise_folder(src: str | os.PathLike[str], out: str | os.PathLike[str],
                     options: NormaliseOptions = NormaliseOptions(), reporter: Reporter = SILENT) -> NormaliseResult:
    src, out = Path(src), Path(out)
    result = NormaliseResult()
    images = list(walk_images(src, result.dropped))
    stems, result.renamed = output_stems([p.relative_to(src) for p in images])
    shared = {source for group in result.renamed for source in group.sources}
    for group in result.renamed:
        reporter.note(group.message("copies"))

    def copy(image: Path) -> Copied:
        rel = image.relative_to(src)
        return normalise_one(image, src, out, options, stems[rel], rel in shared)

    step = run_step(images, copy, step=STEP,
                    name=lambda p: p.relative_to(src).as_posix(), reporter=reporter, label="copying",
                    workers=options.workers)
    result.done = [copied.target for copied in step.done]
    result.dropped.extend(step.dropped)
    edited = [copied.edited_caption for copied in step.done if copied.edited_caption is not None]
    settled = settle_edited(out, edited, STEP, overwrite=options.overwrite_captions, reporter=reporter)
    result.captions_kept.extend(out / name for name in settled.kept)
    result.captions_replaced.extend(out / name for name in settled.replaced)
    return result
