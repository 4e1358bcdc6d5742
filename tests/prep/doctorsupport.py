"""Copies of real test images, made the ways datasets pick up duplicates and bad images.

Shared by the doctor tests: each function takes an upright RGB(A) image and returns the altered
copy; `save_copy` writes it in the format the case calls for.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from prep.images import flatten_alpha, open_image


def resized(image: Image.Image) -> Image.Image:
    return image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.LANCZOS)


def cropped(image: Image.Image) -> Image.Image:
    """5% off the width and the height, taken from the left and top edges."""
    return image.crop((image.width // 20, image.height // 20, image.width, image.height))


def colour_shifted(image: Image.Image) -> Image.Image:
    """A warm tint with brighter highlights (white balance / a filter), clipping at white."""
    rgb = np.asarray(flatten_alpha(image).convert("RGB"), np.float32)
    return Image.fromarray(np.clip(rgb * np.array([1.08, 1.0, 0.88]) + 8, 0, 255).astype(np.uint8))


def mirrored(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


def same(image: Image.Image) -> Image.Image:
    return image


def stored_rotated(image: Image.Image) -> Image.Image:
    """The pixels stored turned a quarter left, with EXIF orientation 6 to show them upright."""
    return image.transpose(Image.Transpose.ROTATE_90)


def _orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


def gaussian_blurred(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(max(image.size) / 400))


def upscaled_from_quarter(image: Image.Image) -> Image.Image:
    """What an upscaled thumbnail looks like: down to a quarter, back up bicubic."""
    small = image.resize((max(1, image.width // 4), max(1, image.height // 4)), Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BICUBIC)


# variant name → (alteration, file suffix, save options)
COPIES: dict[str, tuple[Callable[[Image.Image], Image.Image], str, dict]] = {
    "resized": (resized, ".png", {}),
    "jpeg70": (same, ".jpg", {"quality": 70}),
    "crop5": (cropped, ".png", {}),
    "colour": (colour_shifted, ".png", {}),
    "mirrored": (mirrored, ".png", {}),
    "same-pixels": (same, ".webp", {"lossless": True}),
    "exif-rotated": (stored_rotated, ".png", {"exif": _orientation_6()}),
}
EXACT = ("same-pixels", "exif-rotated")


def save_copy(image: Image.Image, path: Path, **options: object) -> Path:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image = flatten_alpha(image).convert("RGB")
    image.save(path, **options)
    return path


def copy_originals(testdata: Path, folder: Path, names: list[str] | None = None) -> list[str]:
    """The real test images (all, or `names`) copied under `folder`; returns their relative paths."""
    chosen = names or sorted(p.relative_to(testdata).as_posix() for p in testdata.glob("*/*")
                             if p.suffix.lower() in (".png", ".jpg"))
    for name in chosen:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(testdata / name, folder / name)
    return chosen


def make_copy(testdata: Path, original: str, variant: str, folder: Path) -> str:
    """Write `variant` of `original` into `folder/copies/`; returns its path relative to `folder`."""
    alter, suffix, options = COPIES[variant]
    source = open_image(testdata / original)
    if variant == "same-pixels":  # what trains is alpha flattened onto white: the same pixels
        source = flatten_alpha(source).convert("RGB")
    name = f"copies/{Path(original).stem}-{variant}{suffix}"
    (folder / "copies").mkdir(parents=True, exist_ok=True)
    save_copy(alter(source), folder / name, **options)
    return name


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    flatten_alpha(image).convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
