"""Lossless JPEG crops: cut in the DCT domain with libjpeg-turbo, no decode and no re-encode.

A crop of a JPEG source that stays inside the image keeps the source's exact pixels and costs a
fraction of decoding it: `crop` asks libjpeg-turbo's transform for the box, and detection runs on
a scaled decode (1/8 … 1/2 size, decoded at that size rather than reduced afterwards). libjpeg can
only start such a crop on an iMCU boundary (8 or 16 px), so `aligned` grows a box up/left to the
boundary (or, where the grown box would lose its aspect at the image's edge, shifts it there); the
caller records that actual box.

Optional: needs the `PyTurboJPEG` package and the OS libjpeg-turbo library
(`pip install 'loraprep[fast-jpeg]'`). Without them `load_turbojpeg` returns None and crops take
the ordinary decode path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prep.images import read_info

Box = tuple[int, int, int, int]
ENABLE_HINT = "pip install 'loraprep[fast-jpeg]' and the OS libjpeg-turbo library (e.g. apt-get install libturbojpeg0)"
# TJCS_RGB, TJCS_YCbCr, TJCS_GRAY: colour spaces a plain RGB/greyscale decode reproduces (not CMYK/YCCK)
_PLAIN_COLOURSPACES = (0, 1, 2)
_REDUCED_DECODES = ((1, 8), (1, 4), (1, 2), (1, 1))


def load_turbojpeg() -> Any | None:
    """A `turbojpeg.TurboJPEG` handle, or None when the package or the system library is missing."""
    try:
        from turbojpeg import TurboJPEG

        return TurboJPEG()
    except (ImportError, OSError, RuntimeError):
        return None


@dataclass(frozen=True)
class LosslessJpeg:
    """A JPEG source that lossless crops can be cut from: its bytes, size and iMCU size."""

    turbo: Any
    data: bytes
    size: tuple[int, int]
    mcu: tuple[int, int]

    def reduced(self, longest: int) -> np.ndarray:
        """The cheapest scaled decode (RGB array) whose longest side exceeds `longest` / 2 (or the full size).

        The scales halve, so that side is at most `longest` unless even 1/8 is larger: detection
        then sees a copy of (longest/2, longest] pixels, as `faces.reduced_copy` gives the decode path.
        """
        side = max(self.size)
        num, denom = next((f for f in _REDUCED_DECODES if -(-side * f[0] // f[1]) * 2 > longest), (1, 1))
        from turbojpeg import TJPF_RGB

        return self.turbo.decode(self.data, pixel_format=TJPF_RGB, scaling_factor=(num, denom))

    def aligned(self, box: Box, faces: Sequence[Box], keep_aspect: bool = True) -> Box | None:
        """A box on the iMCU grid for `box`, or None when the decode path must cut the exact box.

        First choice: `box` grown up/left to the grid (and, with `keep_aspect`, right or down again
        to its own aspect). When that no longer fits the image (a full-height square, say), `box`
        shifted up/left onto the grid at its own size, so the aspect holds. Either must keep every
        face of `box` wholly inside and cut through none; a box reaching outside the image
        (padding) is never lossless.
        """
        width, height = self.size
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            return None
        dx, dy = box[0] % self.mcu[0], box[1] % self.mcu[1]
        grown = (box[0] - dx, box[1] - dy, box[2], box[3])
        if keep_aspect:
            grown = _restore_aspect(grown, (box[2] - box[0]) / (box[3] - box[1]))
        shifted = (box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy)
        wanted = [f for f in faces if _inside(box, f)]
        for candidate in (grown, shifted):
            if (candidate[2] <= width and candidate[3] <= height and all(_inside(candidate, f) for f in wanted)
                    and not any(_cuts(candidate, f) for f in faces)):
                return candidate
        return None

    def crop_many(self, boxes: Sequence[Box]) -> list[bytes | None]:
        """The JPEG bytes of each aligned box, or None for a box libjpeg-turbo did not return
        exactly. One transform call cuts them all, so the source is entropy-decoded once however
        many crops an image gives. No EXIF/ICC/comment markers are copied, like the decode path's
        re-encode: an EXIF thumbnail or GPS tag of the whole source must not travel with a crop."""
        if not boxes:
            return []
        regions = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
        try:
            outputs = self.turbo.crop_multiple(self.data, regions, copynone=True)
        except OSError:  # one box libjpeg-turbo refuses: cut them one by one, so the others stay lossless
            if len(boxes) == 1:
                return [None]
            return [self.crop_many([box])[0] for box in boxes]
        return [data if tuple(self.turbo.decode_header(data)[:2]) == (w, h) else None
                for data, (_, _, w, h) in zip(outputs, regions, strict=True)]


def _inside(box: Box, face: Box) -> bool:
    return box[0] <= face[0] and box[1] <= face[1] and box[2] >= face[2] and box[3] >= face[3]


def _cuts(box: Box, face: Box) -> bool:
    """The box overlaps the face without holding all of it."""
    overlapping = box[0] < face[2] and face[0] < box[2] and box[1] < face[3] and face[1] < box[3]
    return overlapping and not _inside(box, face)


def _restore_aspect(box: Box, ratio: float) -> Box:
    """`box` extended right or down (never shrunk) to the nearest whole pixels of aspect `ratio`."""
    w, h = box[2] - box[0], box[3] - box[1]
    if w / h < ratio:
        w = max(w, round(h * ratio))
    else:
        h = max(h, round(w / ratio))
    return (box[0], box[1], box[0] + w, box[1] + h)


def open_lossless(turbo: Any, path: Path, max_pixels: int | None, data: bytes | None = None) -> LosslessJpeg | None:
    """`path` as a LosslessJpeg when a lossless crop reproduces what `open_image` would show: a
    baseline-decodable JPEG, upright (EXIF orientation 1 or none), RGB/YCbCr or greyscale.
    Anything else (other formats, rotated, CMYK, unknown sampling) returns None. `data`: the
    file's bytes when the caller has already read them."""
    info = read_info(path, max_pixels=max_pixels)
    if info.format != "JPEG" or info.orientation != 1 or info.mode not in ("RGB", "L") or info.frames != 1:
        return None
    data = path.read_bytes() if data is None else data
    try:
        width, height, subsample, colourspace = turbo.decode_header(data)[:4]
        from turbojpeg import tjMCUHeight, tjMCUWidth

        mcu = (tjMCUWidth[subsample], tjMCUHeight[subsample])
    except (OSError, IndexError, TypeError, ValueError):
        return None
    if colourspace not in _PLAIN_COLOURSPACES or subsample < 0:
        return None
    return LosslessJpeg(turbo, data, (width, height), mcu)
