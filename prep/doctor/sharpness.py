"""Blurry and low-detail images, judged against the dataset they are in.

Two numbers per image, both measured on a grey copy of a normalised area (see `fingerprint`):

- **sharpness**: how crisp the image's strongest edges are: the 99th percentile of |Laplacian|
  over the same percentile after a σ=1 Gaussian blur. Re-blurring a sharp edge flattens its
  Laplacian peak a lot, re-blurring a soft edge little. It is a ratio over the strongest edges
  only, so it does not care how much of the picture is flat: crisp line art on flat colour scores
  as sharp as a detailed photo (3.1–5.3 on the test images), where the variance of the Laplacian
  would call all flat anime art "blurry". Blurred or 4×-upscaled copies score 1.1–1.9.
- **detail**: the variance of the Laplacian: how much fine structure there is at all (a blank
  wall, an empty background, a near-solid frame score low).

Both are judged only where there is detail enough to judge: an image under MIN_JUDGE_SIDE pixels on
its short side is not judged (it is reported as tiny), and one whose picture holds no more detail
than that, enlarged to a larger size (an 8×8 picture blown up to 512×512), is reported as too small
to judge, not as blurry: `native_detail_too_small` shrinks it to that size and back, and finds it
unchanged. Such images do not count towards the dataset's medians either.

An image is flagged when it is far below the dataset's own median (a robust z-score over the
logarithms: median and MAD, so a few bad images cannot move the yardstick), or, for sharpness,
below a floor no sharp image reaches at this scale, so a dataset that is blurry throughout is
still told.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Below this an image is blurry whatever the rest of the dataset is (see the module docstring).
SHARPNESS_FLOOR = 2.2
EDGE_PERCENTILE = 99
SAMPLE = 20_000
NO_EDGES = 1.0  # a 99th-percentile |Laplacian| below this (0–255 scale): nothing to be sharp or blurry
# detail (Laplacian variance) below this is a practically uniform picture
BLANK_DETAIL = 2.0
# Robust spreads are never taken as tighter than these (log units): a dataset of near-identical
# images must not make a small difference look like an outlier.
MIN_SPREAD = {"sharpness": 0.2, "detail": 0.5}
MIN_IMAGES_TO_COMPARE = 5
MAD_TO_SIGMA = 1.4826
# Sharpness needs at least this many pixels of real detail on the short side to mean anything.
MIN_JUDGE_SIDE = 32
# A picture shrunk to MIN_JUDGE_SIDE and enlarged back differs from itself by less than this share of
# its contrast (99th percentile of the difference) when it holds no more detail than that: enlarged
# 8×8 noise 0.013–0.04, the test photos and drawings 0.27–0.50 (σ=2 blurred 0.15–0.34).
ENLARGED_ERROR = 0.05
BLANK_CONTRAST = 16  # grey levels between the 1st and 99th percentile below which a picture is blank
Judged = Literal["ok", "small", "enlarged"]


def judgeable(grey: np.ndarray) -> Judged:
    """Whether the sharpness of this grey analysis copy can be judged: "small" (too few pixels),
    "enlarged" (its detail is that of a picture under MIN_JUDGE_SIDE pixels, blown up) or "ok"."""
    height, width = grey.shape
    if min(height, width) < MIN_JUDGE_SIDE:
        return "small"
    return "enlarged" if native_detail_too_small(grey) else "ok"


def native_detail_too_small(grey: np.ndarray, side: int = MIN_JUDGE_SIDE) -> bool:
    """Whether shrinking the picture to `side` pixels on its short side and enlarging it back
    loses nothing of it (see ENLARGED_ERROR)."""
    import cv2

    height, width = grey.shape
    scale = side / min(height, width)
    if scale >= 1:
        return False
    small = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = np.percentile(grey[::2, ::2], [1, 99])
    if high - low < BLANK_CONTRAST:  # a blank picture is low-detail, whatever its size
        return False
    return _edge_level(back - grey) < ENLARGED_ERROR * float(high - low)


def _edge_level(values: np.ndarray) -> float:
    """The EDGE_PERCENTILE of |values|, over an even sample of at most SAMPLE of them (a full
    percentile of 150,000 values costs more than decoding the image)."""
    sample = np.abs(values.reshape(-1)[::max(1, values.size // SAMPLE)])
    rank = min(sample.size - 1, int(sample.size * EDGE_PERCENTILE / 100))
    return float(np.partition(sample, rank)[rank])


def measure(grey: np.ndarray) -> tuple[float, float]:
    """(sharpness, detail) of a grey float32 image.

    sharpness: strongest-edge |Laplacian| over that of the image blurred with σ=1 (> 1 for real
    images; 0 when there are no edges at all: such an image is blank, and its detail says so).
    detail: the variance of the Laplacian.
    """
    import cv2

    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    detail = float(cv2.meanStdDev(laplacian)[1][0, 0]) ** 2
    fine = _edge_level(laplacian)
    coarse = _edge_level(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), 1.0), cv2.CV_32F))
    if fine < NO_EDGES or coarse <= 0:
        return 0.0, detail
    return fine / coarse, detail


@dataclass(frozen=True)
class Measured:
    path: str
    sharpness: float
    detail: float
    judged: Judged = "ok"  # see `judgeable`


@dataclass(frozen=True)
class SharpnessFinding:
    """One blurry or low-detail image: its score, the dataset's median and how far below it is."""

    path: str
    kind: str        # "blurry" | "low-detail" | "too-small-to-judge"
    score: float     # sharpness for "blurry", detail for "low-detail"
    median: float    # the dataset's median of the same measure
    z: float | None  # robust z-score below the median; None when judged by the floor alone

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "score": round(self.score, 3),
                "median": round(self.median, 3), "z": None if self.z is None else round(self.z, 2)}


def _robust(values: Sequence[float], measure: str) -> tuple[float, float]:
    """Median and robust spread (MAD as a σ) of the logarithms, the spread floored."""
    logs = [math.log(max(v, 1e-6)) for v in values]
    median = statistics.median(logs)
    mad = statistics.median(abs(v - median) for v in logs)
    return median, max(MAD_TO_SIGMA * mad, MIN_SPREAD[measure])


def judge(measured: Sequence[Measured], sensitivity: float = 3.0) -> list[SharpnessFinding]:
    """Images whose sharpness or detail is `sensitivity` robust spreads below the dataset's median
    (only with at least MIN_IMAGES_TO_COMPARE images), or whose sharpness is under the floor; and
    images whose detail is too small to judge (`judgeable`: "enlarged"; "small" ones are left to
    the size checks).

    An image that is blurry is not also listed as low-detail, and a blank image is low-detail,
    never "blurry" (it has no edges to be soft).
    """
    found = [SharpnessFinding(m.path, "too-small-to-judge", m.sharpness, 0.0, None)
             for m in measured if m.judged == "enlarged"]
    measured = [m for m in measured if m.judged == "ok"]
    if not measured:
        return found
    compare = len(measured) >= MIN_IMAGES_TO_COMPARE
    sharp_median, sharp_spread = _robust([m.sharpness for m in measured if m.sharpness > 0] or [1.0], "sharpness")
    detail_median, detail_spread = _robust([m.detail for m in measured], "detail")
    for m in measured:
        blank = m.detail < BLANK_DETAIL or m.sharpness == 0
        z_sharp = (sharp_median - math.log(max(m.sharpness, 1e-6))) / sharp_spread
        z_detail = (detail_median - math.log(max(m.detail, 1e-6))) / detail_spread
        if not blank and ((compare and z_sharp >= sensitivity) or m.sharpness < SHARPNESS_FLOOR):
            found.append(SharpnessFinding(m.path, "blurry", m.sharpness, math.exp(sharp_median),
                                          z_sharp if compare else None))
        elif blank or (compare and z_detail >= sensitivity):
            found.append(SharpnessFinding(m.path, "low-detail", m.detail, math.exp(detail_median),
                                          z_detail if compare else None))
    return found
