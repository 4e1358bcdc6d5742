"""Sizes against buckets: what each image's bucket does to it, and how the buckets are used.

Training scales every image to cover its bucket and trims the overhang (`prep.buckets`). So an
image smaller than its bucket is enlarged (upscaled: soft, it teaches blur), a very elongated one
loses much of itself to the trim (an extreme aspect ratio), and a bucket holding a single image
makes a batch of one. All pure arithmetic over header sizes: nothing is decoded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from prep.buckets import BucketPlan, cover_and_trim

Size = tuple[int, int]
UPSCALE_FROM = 1.02   # enlargements below 2% are resampling, not upscaling
TINY_FROM = 2.0       # needing twice its size or more: a quarter of the pixels it trains as
# An extreme aspect ratio: losing a fifth of the image to the bucket trim, or 3:1 and longer (3:2
# photos lose ~10% to the 64-px bucket grid as a matter of course; that is not worth a finding).
TRIM_FROM = 0.20
ASPECT_FROM = 3.0


@dataclass(frozen=True)
class Placement:
    """How one image lands in its bucket."""

    path: str
    size: Size
    bucket: Size
    scale: float    # > 1: enlarged to cover the bucket
    trimmed: float  # share of the scaled image cut away to fit the bucket

    @property
    def aspect(self) -> float:
        """Long side over short side (≥ 1)."""
        return max(self.size) / max(1, min(self.size))


def place(path: str, size: Size, bucket: Size) -> Placement:
    resized, _ = cover_and_trim(size, bucket)
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    trimmed = 1.0 - (bucket[0] * bucket[1]) / (resized[0] * resized[1])
    return Placement(path, size, bucket, scale, max(0.0, trimmed))


def place_all(paths: Sequence[str], sizes: Sequence[Size], plan: BucketPlan,
              frozen: Sequence[Size | None] | None = None) -> list[Placement]:
    """Each image's placement: its frozen bucket (a manifest's) when given, else the plan's choice."""
    assigned = plan.assign_all(sizes)
    frozen = frozen or [None] * len(sizes)
    return [place(path, size, fixed or bucket)
            for path, size, bucket, fixed in zip(paths, sizes, assigned, frozen, strict=True)]


@dataclass(frozen=True)
class BucketUsage:
    """Images per bucket, the share each bucket's images lose to trimming, single-image buckets."""

    resolution: Size
    step: int
    no_upscale: bool
    counts: dict[Size, int]
    trimmed: dict[Size, float]   # mean trimmed share per bucket
    single: dict[Size, str]      # bucket → its only image
    wasted: float                # mean trimmed share over all images

    def to_dict(self) -> dict:
        return {"resolution": list(self.resolution), "step": self.step, "no_upscale": self.no_upscale,
                "buckets": [{"bucket": list(b), "images": n, "trimmed": round(self.trimmed[b], 4)}
                            for b, n in self.counts.items()],
                "single_image": [{"bucket": list(b), "path": p} for b, p in self.single.items()],
                "wasted": round(self.wasted, 4)}


def usage(placements: Sequence[Placement], plan: BucketPlan) -> BucketUsage:
    members: dict[Size, list[Placement]] = defaultdict(list)
    for placement in placements:
        members[placement.bucket].append(placement)
    ordered = sorted(members, key=lambda b: (-len(members[b]), b))
    return BucketUsage(
        plan.resolution, plan.step, plan.no_upscale,
        {b: len(members[b]) for b in ordered},
        {b: sum(p.trimmed for p in members[b]) / len(members[b]) for b in ordered},
        {b: members[b][0].path for b in ordered if len(members[b]) == 1},
        sum(p.trimmed for p in placements) / len(placements) if placements else 0.0)
