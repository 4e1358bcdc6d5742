"""The one place images are opened and saved.

Every step reads pixels through `open_image` so that EXIF orientation, odd modes, transparency and
oversized files are handled the same way everywhere, and writes them through `save_image_atomic`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from prep.atomic import write_bytes_atomic
from prep.errors import BadImage, ImageTooLarge

# loraprep enforces its own, configurable pixel limit (see `open_image`); PIL's fixed global one
# would otherwise refuse legitimate large scans before ours is consulted.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 150_000_000
WHITE = (255, 255, 255)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_T = Image.Transpose
# What a viewer does to stored pixels for each EXIF orientation (as ImageOps.exif_transpose).
_ORIENT = {
    2: lambda im: im.transpose(_T.FLIP_LEFT_RIGHT), 3: lambda im: im.transpose(_T.ROTATE_180),
    4: lambda im: im.transpose(_T.FLIP_TOP_BOTTOM), 5: lambda im: im.transpose(_T.TRANSPOSE),
    6: lambda im: im.transpose(_T.ROTATE_270), 7: lambda im: im.transpose(_T.TRANSVERSE),
    8: lambda im: im.transpose(_T.ROTATE_90),
}


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says, with width/height as displayed (after EXIF orientation)."""

    width: int
    height: int
    format: str
    mode: str
    orientation: int
    frames: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


MASK_SUFFIX = ".mask.png"  # NAME.mask.png is NAME's subject mask (prep.subjectmask), never an image


def is_mask_name(name: str) -> bool:
    return name.lower().endswith(MASK_SUFFIX)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_name(path.name)


def _open_lazy(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(path)
    except FileNotFoundError as exc:
        raise BadImage.at(path, "file not found") from exc
    except PermissionError as exc:
        raise BadImage.at(path, "permission denied", hint="check the file's permissions") from exc
    except UnidentifiedImageError as exc:
        size = path.stat().st_size if path.exists() else 0
        what = "empty file (0 bytes)" if size == 0 else "not a recognised image format"
        raise BadImage.at(path, what) from exc
    except OSError as exc:
        raise BadImage.at(path, f"cannot open ({exc.strerror or exc})") from exc


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8. For PNG only an eXIf chunk before the pixel data counts: PIL's
    getexif() on a PNG decodes the whole image to look behind it, which would make scans 50× slower."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(_EXIF_ORIENTATION, 1)
        else:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not cost the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge.at(
            path, f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels exceeds the limit of {max_pixels:,}",
            hint="raise the limit with --max-pixels if the file is trusted (this guards against decompression bombs)",
        )


# The bytes a complete file of each format ends with (trailing padding tolerated).
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def _check_complete(path: Path, fmt: str | None) -> None:
    """Catch truncated downloads cheaply: the end-of-image marker must be in the file's tail."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 1024))
        if marker not in handle.read():
            raise BadImage.at(path, "truncated or corrupt file (no end-of-image marker)")


def read_info(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read size, format and orientation from the header (and a truncation check on the tail).

    Pixels are not decoded.
    """
    path = Path(path)
    with _open_lazy(path) as image:
        _check_pixels(path, image.size, max_pixels)
        _check_complete(path, image.format)
        orientation = _orientation(image)
        width, height = image.size
        if orientation in _SWAPS_AXES:
            width, height = height, width
        return ImageInfo(width, height, image.format or "?", image.mode,
                         orientation, getattr(image, "n_frames", 1))


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """I;16 / I / F modes: scale to 0-255 instead of PIL's clipping convert('L')."""
    array = np.asarray(image)
    if array.dtype.kind == "f":
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        scaled = np.clip(array / top * 255.0, 0, 255)
    else:
        top = 65535 if array.max(initial=0) > 255 else 255
        scaled = array.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def normalise_mode(image: Image.Image) -> Image.Image:
    """Return an RGB or RGBA image, whatever mode came in (P, LA, CMYK, I;16, 1, YCbCr, ...)."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode in ("LA", "La", "RGBa"):
        return image.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        return _to_8bit_grey(image).convert("RGB")
    if mode in ("L", "1"):
        return image.convert("RGB") if "transparency" not in image.info else image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def flatten_alpha(image: Image.Image, colour: tuple[int, int, int] = WHITE) -> Image.Image:
    """Composite transparent pixels onto a solid colour (training ignores alpha)."""
    if "A" not in image.getbands():
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, colour)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def open_image(path: str | os.PathLike[str], *, flatten: tuple[int, int, int] | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode the first frame as RGB/RGBA, upright per EXIF, optionally flattened onto `flatten`.

    `draft` asks JPEG decoders for a reduced decode of at least that size (cheap detection passes);
    the result may be smaller than the file's pixel size, never smaller than `draft`.
    Raises `BadImage` (or `ImageTooLarge`) naming the file and the reason.
    """
    path = Path(path)
    with _open_lazy(path) as image:
        _check_pixels(path, image.size, max_pixels)
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", draft)
            orientation = _orientation(image)
            image.load()
            oriented = _ORIENT[orientation](image) if orientation != 1 else image
            # Loaded pixels outlive the file's closing at the end of this block: no copy needed.
            result = normalise_mode(oriented)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            reason = str(exc) or type(exc).__name__
            if "truncated" in reason:
                reason = "truncated or corrupt file"
            raise BadImage.at(path, f"cannot decode ({reason})") from exc
    result.info.pop("exif", None)
    return flatten_alpha(result, flatten) if flatten is not None else result


def encode_image(image: Image.Image, suffix: str, *, quality: int = 95) -> bytes:
    """Encode for the given extension; JPEG cannot hold alpha, so it is flattened onto white."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".webp": "WEBP",
           ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix.lower())
    if fmt is None:
        raise BadImage(f"cannot write images with extension '{suffix}'", hint="use .png, .jpg or .webp")
    if fmt in ("JPEG", "BMP") and "A" in image.getbands():
        image = flatten_alpha(image)
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def save_image_atomic(image: Image.Image, path: str | os.PathLike[str], *, quality: int = 95) -> None:
    """Write an image so that a crash never leaves a half-written file at `path`."""
    path = Path(path)
    write_bytes_atomic(path, encode_image(image, path.suffix, quality=quality))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
