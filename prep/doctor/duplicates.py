"""Exact and near duplicates: candidates from perceptual hashes, each confirmed before it is reported.

1. Candidates: every pair whose 64-bit DCT hashes (either image, or one mirrored) differ in at most
   CANDIDATE_DISTANCE bits and whose 63 DCT coefficients correlate at least MIN_CORRELATION. All
   pairs are compared at once with bit operations (10,000 images: 50 million pairs in about a
   second), so nothing is missed for being in another folder or sorted far apart.
2. Exact: a candidate pair of the same size and (near-)identical hash is decoded in full and its
   pixels hashed (`pixel_digest`): equal digests are the same picture, whatever the file format.
3. Near: every other candidate is compared by `compare.difference` (aligned, colour-matched,
   neighbourhood-tolerant) and kept below `compare.NEAR_LIMIT`.

Pairs join into groups (a copy of a copy is in the group of the original). Each group names the
copy to keep: the most pixels, then a lossless format, then clearly the sharpest, then a captioned
one, then the oldest file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from prep.doctor.compare import NEAR_LIMIT, difference
from prep.doctor.fingerprint import Fingerprint, mirrored_coefficients
from prep.progress import SILENT, Reporter

CANDIDATE_DISTANCE = 16
MIN_CORRELATION = 0.75
EXACT_DISTANCE = 8  # the same pixels decoded by two codecs' scaling paths differ in a few hash bits
MAX_CANDIDATES = 24  # closest look-alikes compared per image
_CHUNK_CELLS = 4_000_000  # pairs compared per block of rows (≈ 32 MB of hash XORs)


@dataclass(frozen=True)
class Hashed:
    """What duplicate finding needs about one image."""

    path: str
    size: tuple[int, int]
    lossless: bool          # PNG/BMP/TIFF: preferred over a JPEG of the same size
    fingerprint: Fingerprint
    captioned: bool = False
    modified: float = 0.0   # mtime: of two otherwise equal copies the older is likelier the original


@dataclass(frozen=True)
class Pair:
    first: int
    second: int
    distance: int      # hash bits that differ (after mirroring, if `mirrored`)
    mirrored: bool
    exact: bool
    difference: float  # compare.difference score; 0 for exact pairs


@dataclass(frozen=True)
class DuplicateGroup:
    """Images showing the same picture. `images[0]` is the one to keep."""

    kind: Literal["exact", "near"]
    images: tuple[str, ...]
    distance: int        # the largest hash distance between joined members
    mirrored: bool       # some member is a mirror image of another
    difference: float    # the largest comparison score between joined members (0: exact)
    identical: tuple[tuple[str, ...], ...] = ()  # members with the very same pixels, in a near group

    @property
    def keep(self) -> str:
        return self.images[0]

    @property
    def extra(self) -> tuple[str, ...]:
        return self.images[1:]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "images": list(self.images), "distance": self.distance,
                "keep": self.keep, "mirrored": self.mirrored, "difference": round(self.difference, 3),
                "identical": [list(paths) for paths in self.identical]}


def _popcount(values: np.ndarray) -> np.ndarray:
    counter = getattr(np, "bitwise_count", None)
    if counter is not None:
        return counter(values)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[values.view(np.uint8)].reshape(*values.shape, 8).sum(axis=-1, dtype=np.uint8)


def candidate_pairs(fingerprints: Sequence[Fingerprint], max_distance: int = CANDIDATE_DISTANCE,
                    min_correlation: float = MIN_CORRELATION,
                    per_image: int = MAX_CANDIDATES) -> list[tuple[int, int, int, bool]]:
    """(i, j, distance, mirrored) for i < j whose hashes are within `max_distance` bits (straight
    or mirrored) and whose DCT coefficients correlate at least `min_correlation`.

    Each image keeps its `per_image` closest later candidates: groups form through chains of
    pairs, and a dataset of a thousand near-identical frames must not become half a million pairs.
    """
    n = len(fingerprints)
    if n < 2:
        return []
    straight = np.array([f.phash for f in fingerprints], dtype=np.uint64)
    mirrored = np.array([f.phash_mirrored for f in fingerprints], dtype=np.uint64)
    coefficients = np.stack([f.coefficients for f in fingerprints])
    chunk = max(1, min(512, _CHUNK_CELLS // n))
    found = []
    for start in range(0, n, chunk):
        rows = straight[start:start + chunk, None]
        same = _popcount(rows ^ straight[None, :])
        flip = _popcount(rows ^ mirrored[None, :])
        distance = np.minimum(same, flip)
        close = (distance <= max_distance) & (np.arange(n)[None, :] > np.arange(start, start + len(rows))[:, None])
        for i in np.flatnonzero(close.any(axis=1)):
            a = start + int(i)
            columns = np.flatnonzero(close[i])
            if len(columns) > per_image:
                columns = columns[np.argsort(distance[i, columns], kind="stable")[:per_image]]
            for b in map(int, columns):
                use_mirror = bool(flip[i, b] < same[i, b])
                other = mirrored_coefficients(coefficients[b]) if use_mirror else coefficients[b]
                if float(coefficients[a] @ other) >= min_correlation:
                    found.append((a, b, int(distance[i, b]), use_mirror))
    return found


class _Groups:
    """Union-find over image indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _keep_order(image: Hashed) -> tuple:
    # sharpness counts in steps of about 20%: smaller differences are noise of the measure
    sharpness = -int(math.log(max(image.fingerprint.sharpness, 1e-3)) / 0.2)
    return (-image.size[0] * image.size[1], not image.lossless, sharpness, not image.captioned,
            image.modified, image.path)


def group_pairs(images: Sequence[Hashed], pairs: Sequence[Pair]) -> list[DuplicateGroup]:
    """Confirmed pairs joined into groups, each ordered keep-first; groups in path order."""
    groups, identical = _Groups(len(images)), _Groups(len(images))
    for pair in pairs:
        groups.join(pair.first, pair.second)
        if pair.exact:
            identical.join(pair.first, pair.second)
    by_group: dict[int, list[Pair]] = {}
    for pair in pairs:
        by_group.setdefault(groups.find(pair.first), []).append(pair)
    result = []
    for joined in by_group.values():
        indices = {i for pair in joined for i in (pair.first, pair.second)}
        ordered = sorted(indices, key=lambda i: _keep_order(images[i]))
        same: dict[int, list[str]] = {}
        for i in ordered:
            same.setdefault(identical.find(i), []).append(images[i].path)
        result.append(DuplicateGroup(
            "exact" if all(p.exact for p in joined) else "near",
            tuple(images[i].path for i in ordered),
            max(p.distance for p in joined), any(p.mirrored for p in joined),
            max(p.difference for p in joined),
            tuple(tuple(paths) for paths in same.values() if len(paths) > 1)))
    return sorted(result, key=lambda g: min(g.images))


def find_duplicates(images: Sequence[Hashed], *, pixels: Callable[[int], str],
                    colour: Callable[[int], np.ndarray], near_limit: float = NEAR_LIMIT,
                    reporter: Reporter = SILENT) -> list[DuplicateGroup]:
    """Every group of two or more images showing the same picture.

    `pixels(i)` is image i's `pixel_digest`, `colour(i)` its RGB analysis copy; both are asked
    only for candidates (callers cache them: an image may be in several pairs). Exact pairs are
    settled first; then the closest candidates are compared, and a pair already joined through
    others is not compared again (a group of n copies costs about n comparisons, not n²).
    """
    candidates = candidate_pairs([image.fingerprint for image in images])
    cluster = _Groups(len(images))  # candidates of one cluster together: the callers' caches stay warm
    for a, b, _, _ in candidates:
        cluster.join(a, b)
    candidates.sort(key=lambda c: (cluster.find(c[0]), c[2], c[0], c[1]))
    confirmed: list[Pair] = []
    joined = _Groups(len(images))
    with reporter.task("comparing look-alikes", len(candidates)) as advance:
        near = []
        for a, b, distance, mirrored in candidates:
            if (not mirrored and distance <= EXACT_DISTANCE and images[a].size == images[b].size
                    and pixels(a) == pixels(b)):
                confirmed.append(Pair(a, b, distance, False, True, 0.0))
                joined.join(a, b)
                advance(1)
            else:
                near.append((a, b, distance, mirrored))
        for a, b, distance, mirrored in near:
            if joined.find(a) != joined.find(b):
                score = difference(colour(a), colour(b), mirrored)
                if score is not None and score < near_limit:
                    confirmed.append(Pair(a, b, distance, mirrored, False, score))
                    joined.join(a, b)
            advance(1)
    return group_pairs(images, confirmed)
