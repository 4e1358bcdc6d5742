"""Where to crop when there is no face: the focal point and the dead space around the subject.

Like the WebUI's "auto focal point", the point is the centre of mass of detail (edge energy),
pulled gently towards the middle so a busy border does not win over the subject. A standing figure
cut out on a transparent or flat background (a character sprite) is the exception: its detail
sits in the clothes, its head at the top, so there the crop keeps the top (`figure_box`). Pure
functions over small arrays: the crop step hands in its reduced detection image.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def focal_point(image: np.ndarray) -> tuple[float, float]:
    """(x, y) in the image's pixels: the detail-weighted centre, biased towards the middle."""
    import cv2

    if image.ndim == 3 and image.shape[2] == 4:  # transparent pixels count as white, as flattened
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = min(1.0, 256 / max(height, width))
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    small = grey.astype(np.float32)
    energy = np.abs(cv2.Sobel(small, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(small, cv2.CV_32F, 0, 1))
    energy = cv2.GaussianBlur(energy, (0, 0), sigmaX=max(1.0, min(small.shape) / 32))
    rows, cols = np.mgrid[0:small.shape[0], 0:small.shape[1]].astype(np.float32)
    prior = np.exp(-(((cols / small.shape[1] - 0.5) ** 2) + ((rows / small.shape[0] - 0.5) ** 2)) / 0.18)
    weights = energy * prior
    total = float(weights.sum())
    if total <= 1e-6:
        return (width / 2, height / 2)
    x = float((weights * cols).sum() / total + 0.5) / small.shape[1] * width
    y = float((weights * rows).sum() / total + 0.5) / small.shape[0] * height
    return (x, y)


def content_box(image: np.ndarray, tolerance: int = 12) -> Box:
    """The box around everything that is not dead space: transparent pixels, or a flat border colour.

    The border colour is the median of the four corners; pixels within `tolerance` of it on every
    channel count as background. An image with nothing but background keeps its full box.
    """
    height, width = image.shape[:2]
    if image.ndim == 3 and image.shape[2] == 4:
        mask = image[:, :, 3] > 8
    else:
        rgb = image[:, :, :3].astype(np.int16)
        corners = np.array([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]])
        border = np.median(corners, axis=0)
        mask = (np.abs(rgb - border) > tolerance).any(axis=2)
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0 or len(ys) == 0:
        return (0, 0, width, height)
    return (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)


FLAT_TOLERANCE = 12
FLAT_SHARE = 0.75  # sprites cut off at the bottom edge have 84-88% of their border flat, photos at most a third


def border_pixels(image: np.ndarray, width: int = 2) -> np.ndarray:
    """The outermost `width` rings of pixels, as (N, channels)."""
    channels = image.shape[2]
    return np.concatenate([image[:width].reshape(-1, channels), image[-width:].reshape(-1, channels),
                           image[:, :width].reshape(-1, channels), image[:, -width:].reshape(-1, channels)])


def flat_border(image: np.ndarray, tolerance: int = FLAT_TOLERANCE, share: float = FLAT_SHARE) -> np.ndarray | None:
    """The colour (RGB) of a flat background: the median border pixel, when at least `share` of the
    border lies within `tolerance` of it on every channel; None for a busy border."""
    ring = border_pixels(image[:, :, :3].astype(np.int16))
    colour = np.median(ring, axis=0)
    return colour if float((np.abs(ring - colour) <= tolerance).all(axis=1).mean()) >= share else None


def figure_box(image: np.ndarray, tallness: float = 1.3) -> Box | None:
    """The content box of a standing figure cut out on a transparent or flat background (at least
    `tallness` times taller than wide), or None for any other picture."""
    transparent = image.ndim == 3 and image.shape[2] == 4 and float((image[:, :, 3] <= 8).mean()) > 0.05
    if not transparent and (image.ndim != 3 or flat_border(image) is None):
        return None
    box = content_box(image)
    return box if box[3] - box[1] >= tallness * (box[2] - box[0]) else None
