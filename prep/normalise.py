"""Copy source images into a dataset folder, upright and in a mode every step can read.

Used by `loraprep prep` when cropping is skipped: originals are never touched; upright RGB JPEGs
are copied byte for byte, everything else is re-encoded losslessly as PNG (alpha kept for `clean`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prep.atomic import atomic_open
from prep.images import DEFAULT_MAX_PIXELS, open_image, read_info, save_image_atomic, sha256_file
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Source, relative_to_base
from prep.runner import StepResult, run_step
from prep.scan import walk_images
from prep.sidecars import caption_path, read_caption, read_meta, update_meta, write_caption


@dataclass(frozen=True)
class NormaliseOptions:
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    force: bool = False
    workers: int = 2


def _target(src_root: Path, image: Path, out: Path, copy_bytes: bool) -> Path:
    rel = image.relative_to(src_root)
    return (out / rel).with_suffix(image.suffix.lower() if copy_bytes else ".png")


def normalise_one(image: Path, src_root: Path, out: Path, options: NormaliseOptions) -> Path:
    info = read_info(image, max_pixels=options.max_pixels)
    copy_bytes = info.format == "JPEG" and info.orientation == 1 and info.mode == "RGB" and info.frames == 1
    target = _target(src_root, image, out, copy_bytes)
    digest = sha256_file(image)
    if not options.force and target.exists() and read_meta(target).get("source", {}).get("sha256") == digest:
        return target  # idempotent: already done for this exact source
    if copy_bytes:
        with open(image, "rb") as source, atomic_open(target, "wb") as handle:
            shutil.copyfileobj(source, handle)
    else:
        save_image_atomic(open_image(image, max_pixels=options.max_pixels), target)
    caption = read_caption(caption_path(image, options.caption_extension))
    if caption is not None:
        write_caption(caption_path(target, options.caption_extension), caption)
    update_meta(target, source=Source(relative_to_base(image, out), digest).to_dict(),
                normalise={"copied": copy_bytes, "from_mode": info.mode, "orientation": info.orientation})
    return target


def normalise_folder(src: str | os.PathLike[str], out: str | os.PathLike[str],
                     options: NormaliseOptions = NormaliseOptions(), reporter: Reporter = SILENT) -> StepResult[Path]:
    src, out = Path(src), Path(out)
    result: StepResult[Path] = StepResult()
    images = list(walk_images(src, result.dropped))
    step = run_step(images, lambda p: normalise_one(p, src, out, options), step="copy",
                    name=lambda p: p.relative_to(src).as_posix(), reporter=reporter, label="copying",
                    workers=options.workers)
    result.done = step.done
    result.dropped.extend(step.dropped)
    return result
