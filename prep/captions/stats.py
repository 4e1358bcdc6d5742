"""Caption statistics: which tags a dataset teaches, how often, and how long its captions are."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from prep.captions.dataset import CaptionDataset
from prep.captions.tokens import ESTIMATE_MARK, CaptionLengths, TokenCounter

# Token-length bins: kohya trains 75, 150 or 225 tokens (one, two or three 77-token CLIP windows).
TOKEN_BINS = ((0, 25), (26, 50), (51, 75), (76, 150), (151, 225), (226, None))
TOKEN_LIMITS = (75, 225)


@dataclass(frozen=True)
class StatsOptions:
    tag: str | None = None  # list the images carrying this tag
    top: int = 30           # tags shown in the frequency table (0: all)


@dataclass(frozen=True)
class TokenSummary:
    counter: str
    exact: bool
    lengths: tuple[int, ...]  # one per captioned image, dataset order

    @property
    def mark(self) -> str:
        return "" if self.exact else ESTIMATE_MARK

    def over(self, limit: int) -> int:
        return sum(1 for n in self.lengths if n > limit)

    def histogram(self) -> list[tuple[str, int]]:
        rows = []
        for low, high in TOKEN_BINS:
            label = f"{low}–{high}" if high is not None else f">{low - 1}"
            rows.append((label, sum(1 for n in self.lengths if n >= low and (high is None or n <= high))))
        return rows

    def to_dict(self) -> dict:
        lengths = self.lengths
        return {"counter": self.counter, "exact": self.exact,
                "min": min(lengths, default=0), "median": statistics.median(lengths) if lengths else 0,
                "mean": round(statistics.fmean(lengths), 2) if lengths else 0, "max": max(lengths, default=0),
                "over": {str(limit): self.over(limit) for limit in TOKEN_LIMITS},
                "histogram": dict(self.histogram())}


@dataclass(frozen=True)
class CaptionStats:
    images: int
    captioned: int
    missing: int
    empty: int
    orphans: int
    distinct_tags: int
    top_tags: tuple[tuple[str, int], ...]
    tokens: TokenSummary
    tag: str | None = None
    tagged: tuple[str, ...] = ()  # images carrying `tag`

    def percent(self, count: int) -> float:
        return 100.0 * count / self.images if self.images else 0.0

    def to_dict(self) -> dict:
        data = {"images": self.images, "captioned": self.captioned, "missing_captions": self.missing,
                "empty_captions": self.empty, "orphan_captions": self.orphans,
                "distinct_tags": self.distinct_tags,
                "tags": [{"tag": t, "count": n, "percent": round(self.percent(n), 2)} for t, n in self.top_tags],
                "tokens": self.tokens.to_dict()}
        if self.tag is not None:
            data["tag_filter"] = {"tag": self.tag, "count": len(self.tagged), "images": list(self.tagged)}
        return data


def caption_stats(dataset: CaptionDataset, counter: TokenCounter, options: StatsOptions = StatsOptions()) -> CaptionStats:
    images = [f for f in dataset.files if f.image is not None]
    counts: Counter[str] = dataset.tag_counts()
    length = CaptionLengths(counter)
    lengths = [length(f.text, f.tags) for f in images if f.text]
    tagged = tuple(f.image for f in images if options.tag is not None and options.tag in f.tags)  # type: ignore[misc]
    return CaptionStats(
        images=len(images),
        captioned=sum(1 for f in images if f.text),
        missing=sum(1 for f in images if not f.exists),
        empty=sum(1 for f in images if f.exists and not f.tags and not f.unreadable),
        orphans=len(dataset.files) - len(images),
        distinct_tags=len(counts),
        top_tags=tuple(counts.most_common(options.top or None)),
        tokens=TokenSummary(counter.name, counter.exact, tuple(lengths)),
        tag=options.tag, tagged=tagged,
    )
