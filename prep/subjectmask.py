"""Subject-mask sidecars: `NAME.mask.png` beside `NAME.png`, what `train --masked-loss` weights the loss by.

Why a sidecar: `clean` computes where the subject is (alpha, flat border, a segmenter, GrabCut) and
`crop` cuts images whose masks must stay aligned with them; kept as a greyscale PNG of the image's
size (255 = subject), the mask can be looked at, edited by hand, and hashed into the manifest like
the image itself. Its record (`mask` in the image's `.loraprep.json`) holds the file name, hash,
where it came from and how much of the image it covers.

`NAME.mask.png` is a reserved name: the dataset walk never takes such a file for an image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.atomic import write_bytes_atomic
from prep.images import MASK_SUFFIX, save_image_atomic, sha256_file
from prep.records import MaskRef

SECTION = "mask"  # the metadata section that records the sidecar
ALMOST_NOTHING = 0.02  # a mask covering less of its image than this trains on almost nothing


def mask_path(image_path: str | os.PathLike[str]) -> Path:
    """`photo.jpg` → `photo.mask.png`, beside it."""
    path = Path(image_path)
    return path.with_name(path.stem + MASK_SUFFIX)


def coverage(matte: np.ndarray) -> float:
    """Share of the image the mask weights: its mean in [0, 1]."""
    values = matte.astype(np.float32)
    if values.max(initial=0) > 1:
        values = values / 255.0
    return round(float(values.mean()), 4) if values.size else 0.0


def _record(path: Path, origin: str, share: float) -> dict[str, Any]:
    return {"path": path.name, "sha256": sha256_file(path), "origin": origin, "coverage": share}


def write_mask(image_path: str | os.PathLike[str], matte: np.ndarray, origin: str) -> dict[str, Any]:
    """Write `matte` (float in [0, 1] or uint8, the image's height × width) as the image's mask
    sidecar, atomically; returns its metadata record."""
    array = matte if matte.dtype == np.uint8 else np.round(np.clip(matte, 0, 1) * 255).astype(np.uint8)
    target = mask_path(image_path)
    save_image_atomic(Image.fromarray(array, "L"), target)
    return _record(target, origin, coverage(array))


def read_mask(path: str | os.PathLike[str]) -> Image.Image:
    """A mask file as a greyscale image (any mode is converted; alpha-only PNGs by their alpha)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("LA", "RGBA", "PA") and image.getchannel("A").getextrema() != (255, 255):
            return image.getchannel("A")
        return image.convert("L")


def cut_mask(source_image: Path, box: tuple[int, int, int, int], target_image: Path) -> dict[str, Any] | None:
    """The source image's mask cut with the same box as its crop (outside the source: 0, not
    subject), written as the crop's mask; None when the source has no mask sidecar."""
    source = mask_path(source_image)
    if not source.is_file():
        return None
    mask = read_mask(source)
    width, height = box[2] - box[0], box[3] - box[1]
    canvas = Image.new("L", (width, height), 0)
    inside = (max(box[0], 0), max(box[1], 0), min(box[2], mask.width), min(box[3], mask.height))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(mask.crop(inside), (inside[0] - box[0], inside[1] - box[1]))
    target = mask_path(target_image)
    save_image_atomic(canvas, target)
    return _record(target, f"cut from {source.name}", coverage(np.asarray(canvas)))


def carry_mask(source_image: Path, target_image: Path, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Copy the source's mask sidecar beside a copy of the image written elsewhere (its pixels
    unchanged in geometry); returns the record for the target, None without a mask."""
    source = mask_path(source_image)
    target = mask_path(target_image)
    if not source.is_file() or source == target:
        return record if source.is_file() else None
    write_bytes_atomic(target, source.read_bytes())
    origin = (record or {}).get("origin", "copied")
    return _record(target, str(origin), coverage(np.asarray(read_mask(target))))



def mask_ref(mask_file: Path, rel_path: str, meta: dict[str, Any]) -> MaskRef:
    """What the manifest records of a mask sidecar: its path as the manifest names it, its hash,
    and its coverage (from the image's record while the file is the one recorded, else measured)."""
    digest = sha256_file(mask_file)
    record = meta.get(SECTION) if isinstance(meta.get(SECTION), dict) else {}
    share = record.get("coverage") if record.get("sha256") == digest else None
    if not isinstance(share, (int, float)):
        share = coverage(np.asarray(read_mask(mask_file)))
    return MaskRef(rel_path, digest, float(share))
