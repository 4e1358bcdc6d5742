"""One image's caption beside what the tagger said about each tag (scores from its meta sidecar)."""

from __future__ import annotations

from dataclasses import dataclass

from prep.captions.dataset import CaptionDataset, CaptionFile
from prep.captions.edit import tag_key
from prep.errors import UsageError
from prep.sidecars import read_meta


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float | None  # None: not from the tagger (typed by hand, trigger)
    category: str | None  # "general" / "character"
    frequency: int        # images in the dataset carrying it


@dataclass(frozen=True)
class CaptionView:
    image: str | None
    caption: str
    text: str | None
    tags: tuple[TagScore, ...]
    rating: str | None
    faces: int | None  # None: no detector ran

    def to_dict(self) -> dict:
        return {"image": self.image, "caption_file": self.caption, "caption": self.text,
                "tags": [{"tag": t.tag, "score": t.score, "category": t.category, "images": t.frequency}
                         for t in self.tags],
                "rating": self.rating, "faces": self.faces}


def tagger_scores(meta: dict) -> dict[str, tuple[float, str]]:
    """tag_key → (score, category) from a meta sidecar's `tags` section."""
    section = meta.get("tags") or {}
    scores = {}
    for category in ("general", "character"):
        for tag, score in (section.get(category) or {}).items():
            scores[tag_key(str(tag))] = (float(score), category)
    return scores


def caption_view(dataset: CaptionDataset, f: CaptionFile, frequency: dict[str, int]) -> CaptionView:
    meta = read_meta(dataset.root / f.image) if f.image else {}
    scores = tagger_scores(meta)
    tags = tuple(TagScore(t, *(scores.get(tag_key(t)) or (None, None)), frequency.get(t, 0)) for t in f.tags)
    faces = meta.get("faces")
    rating = (meta.get("tags") or {}).get("rating")
    return CaptionView(f.image, f.caption, f.text, tags, rating, len(faces) if isinstance(faces, list) else None)


def show_captions(dataset: CaptionDataset, image: str | None = None, limit: int | None = None) -> list[CaptionView]:
    """The view of one image (path relative to the dataset, or its file name), or of the first
    `limit` files (all when None); only those files' meta sidecars are read."""
    frequency = dataset.tag_counts()
    if image is None:
        return [caption_view(dataset, f, frequency) for f in dataset.files[:limit]]
    found = dataset.get(image) or next((f for f in dataset.files if f.image and f.image.rpartition("/")[2] == image),
                                       None)
    if found is None:
        raise UsageError(f"'{image}' is not an image or caption in {dataset.root}",
                         hint="give the path relative to the dataset folder, e.g. `loraprep captions show DS 0001.png`")
    return [caption_view(dataset, found, frequency)]
