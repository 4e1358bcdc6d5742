"""Is one picture a copy of another? The careful check behind every near-duplicate group.

Perceptual hashes find candidates, but they cannot tell a recompressed copy from the same sprite
with another expression (the test set's two Sylvies hash identically). So each candidate pair is
compared properly, on colour copies of about ANALYSIS_AREA pixels:

1. geometry: the second image (mirrored if its mirror matched) is resized onto the first; unless
   that already matches, it is aligned with OpenCV's ECC (an affine warp: absorbs a few percent
   of crop, a shift, a slight rotation);
2. photometry: both are reduced to their detail (a band-pass: σ=1 minus σ=4 Gaussians), and the
   second's colours are mapped onto the first's by a least-squares 3×3 colour matrix, which undoes
   tints, white balance, brightness, contrast and hue rotations;
3. difference: per pixel, how far each image falls outside the other's 3×3 neighbourhood range
   (so sub-pixel misalignment and resampling cost nothing), averaged over 9×9 windows; the worst
   window, divided by the first image's detail level, is the score.

Copies (resized to 2/3, JPEG q70, 5% crop, a strong tint that clips highlights, a hue shift,
mirrored) score ≤ 0.69 on the test images; the two Sylvies (same sprite, another mouth and eyes)
score 1.3, unrelated images 2.5 and more. A pair is "the same picture" below NEAR_LIMIT.
"""

from __future__ import annotations

import math

import numpy as np

NEAR_LIMIT = 0.95
# pictures with less detail than this (band-pass RMS, 0-255 scale) are judged as if they had this
# much: in a nearly flat picture, JPEG noise alone must not make a large relative difference
MIN_DETAIL_LEVEL = 8.0
# a crop of a few percent changes the aspect ratio a little; more is another picture
MAX_ASPECT_CHANGE = 1.2
_DETAIL_SIGMA = (1.0, 4.0)
_WINDOW = 9
_ECC_STOP = 3  # cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT
_COARSE_ITERATIONS = 60
_FINE_ITERATIONS = 15
_MIN_SIDE = 48  # ECC at half size needs room for its 5×5 gradient filter and a margin
# ECC correlation of the half-size greys at which ECC could not align them any better
ALIGNED = 0.998


def _band(image: np.ndarray) -> np.ndarray:
    """The image's detail: a difference of Gaussians (drops flat colour and the finest noise)."""
    import cv2

    fine = cv2.GaussianBlur(image, (0, 0), _DETAIL_SIGMA[0])
    return fine - cv2.GaussianBlur(fine, (0, 0), _DETAIL_SIGMA[1])


def _outside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far each value of `a` lies outside the range of `b` over the 3×3 neighbourhood."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    return np.maximum(0, np.maximum(a - cv2.dilate(b, kernel), cv2.erode(b, kernel) - a))


def _half(grey: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _ecc(a: np.ndarray, b: np.ndarray, warp: np.ndarray, iterations: int) -> np.ndarray | None:
    import cv2

    try:
        _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE, (_ECC_STOP, iterations, 1e-5), None, 5)
    except cv2.error:  # did not converge: the pictures do not line up
        return None
    return warp


def _align(grey_a: np.ndarray, grey_b: np.ndarray) -> np.ndarray | None:
    """The affine warp taking `a`'s pixel grid into `b` (same size), or None when ECC fails.

    Solved at half size first (a quarter of the work), then refined for a few iterations at full size.
    """
    coarse = _ecc(_half(grey_a), _half(grey_b), np.eye(2, 3, dtype=np.float32), _COARSE_ITERATIONS)
    if coarse is None:
        return None
    # x_half = (x + 0.5) / 2 - 0.5 on both sides of x_b = A x_a + t
    linear = coarse[:, :2]
    shift = 2 * coarse[:, 2] + 0.5 * (np.eye(2) - linear).sum(axis=1)
    return _ecc(grey_a, grey_b, np.hstack([linear, shift[:, None]]).astype(np.float32), _FINE_ITERATIONS)


def _score(a: np.ndarray, b: np.ndarray, warp: np.ndarray | None) -> float | None:
    """The difference of `b` (warped by `warp`, or as it is) from `a`, relative to `a`'s detail."""
    import cv2

    height, width = a.shape[:2]
    detail_a, detail_b = _band(a), _band(b)
    valid = np.ones((height, width), np.uint8)
    if warp is not None:
        inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        detail_b = cv2.warpAffine(detail_b, warp, (width, height), flags=inverse)
        valid = cv2.warpAffine(valid, warp, (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    margin = 2 * int(_DETAIL_SIGMA[1]) + 1  # the band-pass of b near its own border is not comparable
    inside = cv2.erode(valid, np.ones((margin, margin), np.uint8), borderValue=0) > 0
    if inside.sum() < _WINDOW * _WINDOW:
        return None
    everywhere = bool(inside.all())  # the usual case: skip copying the masked pixels out
    xb = (detail_b.reshape(-1, 3) if everywhere else detail_b[inside]).astype(np.float64)
    xa = (detail_a.reshape(-1, 3) if everywhere else detail_a[inside]).astype(np.float64)
    try:  # least squares by the normal equations (3×3): the colour matrix mapping b onto a
        colours = np.linalg.solve(xb.T @ xb, xb.T @ xa)
    except np.linalg.LinAlgError:  # b has no detail in some colour direction (e.g. greyscale)
        colours = np.linalg.lstsq(xb, xa, rcond=None)[0]
    detail_b = cv2.transform(detail_b, colours.T.astype(np.float32))  # (not `@`: BLAS is slow on N×3)
    outside = np.maximum(_outside(detail_a, detail_b), _outside(detail_b, detail_a)).max(axis=2)
    worst = float(cv2.blur(outside if everywhere else outside * inside, (_WINDOW, _WINDOW)).max())
    level = float(np.sqrt(np.mean(xa ** 2)))
    return worst / max(level, MIN_DETAIL_LEVEL)


def difference(a: np.ndarray, b: np.ndarray, mirrored: bool = False, limit: float = NEAR_LIMIT) -> float | None:
    """How differently `b` shows the picture `a` shows (RGB float32 arrays, 0–255); None when the
    two cannot be lined up at all (aspect ratios too different, too small, no ECC alignment).

    `b` resized onto `a` is scored as it stands first: resized, recompressed, recoloured and
    mirrored copies are settled there. Only when that is not below `limit` and the two are not
    already as aligned as ECC could make them (correlation ≥ ALIGNED) is ECC run and `b` scored
    warped. So two sprites in the same pose with another expression cost no alignment at all.
    """
    import cv2

    if mirrored:
        b = np.ascontiguousarray(b[:, ::-1])
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    if min(ha, wa, hb, wb) < _MIN_SIDE or abs(math.log((wa / ha) / (wb / hb))) > math.log(MAX_ASPECT_CHANGE):
        return None
    b = cv2.resize(b, (wa, ha), interpolation=cv2.INTER_AREA)
    as_is = _score(a, b, None)
    if as_is is not None and as_is < limit:
        return as_is
    grey_a, grey_b = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if cv2.computeECC(_half(grey_a), _half(grey_b)) >= ALIGNED:
        return as_is
    warp = _align(grey_a, grey_b)
    if warp is None:
        return as_is
    aligned = _score(a, b, warp)
    return as_is if aligned is None else min(aligned, as_is if as_is is not None else aligned)
