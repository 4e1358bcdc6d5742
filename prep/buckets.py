"""Aspect-ratio buckets: pure arithmetic, no I/O.

The bucket list matches sd-scripts' `make_bucket_resolutions` exactly, so a dataset bucketed here
trains on the same shapes there. Assignment is the closest aspect ratio; the image is scaled to
cover the bucket and centre-trimmed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prep.errors import UsageError

Size = tuple[int, int]


def make_bucket_resolutions(resolution: Size, min_size: int = 256, max_size: int = 1024,
                            step: int = 64) -> list[Size]:
    """All (width, height) buckets of about `resolution`'s area, sides in [min, max], multiples of step."""
    check_bucket_settings(resolution, min_size, max_size, step)
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def check_bucket_settings(resolution: Size, min_size: int, max_size: int, step: int) -> None:
    if step <= 0 or step % 8:
        raise UsageError(f"bucket step {step} must be a positive multiple of 8 (64 for SD1/2, 32 or 64 for SDXL)")
    if min(resolution) < step:
        raise UsageError(f"resolution {resolution} is smaller than the bucket step {step}")
    if min_size > max_size:
        raise UsageError(f"--min {min_size} is larger than --max {max_size}")
    if min_size % step or max_size % step:
        raise UsageError(f"--min {min_size} and --max {max_size} must be multiples of --step {step}")
    if max(resolution) > max_size:
        raise UsageError(f"resolution {resolution} exceeds --max {max_size}; raise --max (e.g. 2× the resolution)")


def aspect_error(size: Size, bucket: Size) -> float:
    return abs(size[0] / size[1] - bucket[0] / bucket[1])


def bucket_for(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is closest to the image's (first of equals, as sd-scripts)."""
    return min(buckets, key=lambda b: aspect_error(size, b))


def bucket_for_no_upscale(size: Size, buckets: Sequence[Size], max_area: int, step: int) -> Size:
    """A bucket the image covers without enlargement, using as much of the target area as it has.

    Small images keep their own size, trimmed to the step. Large ones take the closest-aspect
    predefined bucket that fits inside them (larger area wins ties), so a 3072×3000 image at 1024
    gets 1024×1024, not the 960×960 that rounding a rescaled size down would give.
    """
    width, height = size
    if width * height <= max_area:
        return (max(step, width - width % step), max(step, height - height % step))
    fitting = [b for b in buckets if b[0] <= width and b[1] <= height]
    if fitting:
        return min(fitting, key=lambda b: (round(aspect_error(size, b), 9), -b[0] * b[1]))
    scale = math.sqrt(max_area / (width * height))
    scaled = (width * scale, height * scale)
    return (max(step, int(scaled[0]) // step * step), max(step, int(scaled[1]) // step * step))


def cover_and_trim(size: Size, bucket: Size) -> tuple[Size, tuple[int, int, int, int]]:
    """Resize size that covers `bucket` keeping aspect, and the centred trim box in resized pixels."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
    left = (resized[0] - bucket[0]) // 2
    top = (resized[1] - bucket[1]) // 2
    return resized, (left, top, left + bucket[0], top + bucket[1])


@dataclass(frozen=True)
class BucketPlan:
    """Assigns buckets for one set of settings; holds the predefined list once."""

    resolution: Size = (512, 512)
    step: int = 64
    min_size: int = 256
    max_size: int = 1024
    no_upscale: bool = False

    @property
    def buckets(self) -> list[Size]:
        return make_bucket_resolutions(self.resolution, self.min_size, self.max_size, self.step)

    def assign_all(self, sizes: Iterable[Size]) -> list[Size]:
        buckets = self.buckets
        max_area = self.resolution[0] * self.resolution[1]
        if self.no_upscale:
            return [bucket_for_no_upscale(s, buckets, max_area, self.step) for s in sizes]
        return [bucket_for(s, buckets) for s in sizes]

    def assign(self, size: Size) -> Size:
        return self.assign_all([size])[0]


@dataclass(frozen=True)
class BucketSummary:
    histogram: dict[Size, int]
    mean_aspect_error: float
    max_aspect_error: float


def summarise(sizes: Sequence[Size], assigned: Sequence[Size]) -> BucketSummary:
    errors = [aspect_error(s, b) for s, b in zip(sizes, assigned, strict=True)]
    histogram = dict(sorted(Counter(assigned).items()))
    return BucketSummary(histogram, sum(errors) / len(errors) if errors else 0.0, max(errors, default=0.0))
