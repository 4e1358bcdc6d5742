"""One cheap look at each image: a perceptual hash (and its mirror's), and the sharpness numbers.

Each image is decoded once, reduced: JPEGs through libjpeg's scaled decode (PIL draft, as `crop`
detects faces on a 1/8…1/2 decode), everything else decoded and shrunk, to a grey copy of about
ANALYSIS_AREA pixels in the image's own aspect ("a normalised size": sharpness is then judged at
one scale whatever the file's resolution). Alpha is flattened onto white first, as training does.

The perceptual hash is the classic DCT hash: the grey copy shrunk to 32×32, its 8×8 lowest
frequencies, one bit per coefficient above their median (DC left out). Mirroring an image negates
its odd horizontal frequencies, so the mirror's hash comes from the same coefficients for free.
The 63 coefficients themselves are kept too (normalised): their correlation tells a near copy from
an unrelated image whose hash happens to be close, before any expensive comparison.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prep.doctor.sharpness import Judged, judgeable, measure
from prep.images import WHITE, flatten_alpha, open_image

ANALYSIS_AREA = 384 * 384
HASH_SIDE = 32
HASH_FREQUENCIES = 8
# (-1)^k per horizontal frequency k: the DCT of a mirrored image
_MIRROR = np.array([(-1) ** k for k in range(HASH_FREQUENCIES)] * HASH_FREQUENCIES, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What one look at an image gives: hashes (64-bit ints), DCT shape, sharpness numbers."""

    phash: int
    phash_mirrored: int
    coefficients: np.ndarray = field(repr=False)  # 63 AC coefficients, unit length (float32)
    sharpness: float
    detail: float
    judged: Judged = "ok"  # whether there is detail enough to judge sharpness (sharpness.judgeable)


def analysis_size(size: tuple[int, int], area: int = ANALYSIS_AREA) -> tuple[int, int]:
    """`size` scaled (never up) to about `area` pixels, aspect kept."""
    width, height = size
    scale = min(1.0, math.sqrt(area / max(1, width * height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduced(path: str | os.PathLike[str], size: tuple[int, int], *, area: int = ANALYSIS_AREA,
            mode: str = "L", max_pixels: int | None = None) -> np.ndarray:
    """The image as float32 (grey, or RGB with mode="RGB") at `analysis_size(size, area)`.

    `size` is the displayed size from the header. The JPEG draft request is square at the target's
    short side: libjpeg then keeps both stored sides at least that long, whichever way EXIF
    rotates them, so the result is never smaller than the target.
    """
    import cv2

    target = analysis_size(size, area)
    short = min(target)
    image = open_image(path, max_pixels=max_pixels, draft=(short, short))
    image = flatten_alpha(image, WHITE).convert(mode)
    array = np.asarray(image)
    if (image.width, image.height) != target:
        # a JPEG's scaled decode is less than 2× the target: bilinear is enough and 8× cheaper
        # than area averaging at such a ratio; larger reductions (other formats) need the average
        shrink = image.width / target[0] >= 2 or image.height / target[1] >= 2
        array = cv2.resize(array, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return array.astype(np.float32)


def _bits(values: np.ndarray) -> int:
    """64 bits: one per coefficient above the AC median, DC (index 0) always 0."""
    ac = values[1:]
    bits = np.concatenate([[False], ac > np.median(ac)])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fingerprint_grey(grey: np.ndarray) -> Fingerprint:
    """Hashes and sharpness numbers of a grey analysis copy."""
    import cv2

    small = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    dct = cv2.dct(small)[:HASH_FREQUENCIES, :HASH_FREQUENCIES].reshape(-1)
    mirrored = dct * _MIRROR
    ac = dct[1:]
    norm = float(np.linalg.norm(ac))
    coefficients = (ac / norm if norm > 1e-6 else np.zeros_like(ac)).astype(np.float32)
    return Fingerprint(_bits(dct), _bits(mirrored), coefficients, *measure(grey), judgeable(grey))


def fingerprint(path: str | os.PathLike[str], size: tuple[int, int], *,
                max_pixels: int | None = None) -> Fingerprint:
    """Decode `path` once, reduced, and fingerprint it."""
    return fingerprint_grey(reduced(path, size, max_pixels=max_pixels))


def mirrored_coefficients(coefficients: np.ndarray) -> np.ndarray:
    """The AC coefficients of the mirrored image."""
    return coefficients * _MIRROR[1:]


def pixel_digest(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> str:
    """sha256 of the pixels as they train (upright, alpha on white, RGB) and the size: equal for
    the same picture saved as PNG, WebP-lossless or BMP, or rotated by an EXIF tag instead."""
    image = flatten_alpha(open_image(Path(path), max_pixels=max_pixels), WHITE).convert("RGB")
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
