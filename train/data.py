"""Manifest → training examples → bucketed batches; caption processing and pixel augmentation.

Why everything here is seeded by (seed, epoch, batch): an interrupted run resumed from a checkpoint
must see exactly the batches, captions and flips the uninterrupted run saw, without carrying any
random-generator state across the interruption.

The trainer trusts only the manifest: the caption frozen in it is what trains, and a manifest whose
images or caption sidecars changed since it was written is refused (rebuild it with
`loraprep manifest`), because a silently different dataset is the worst kind of training bug.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from prep.buckets import BucketPlan, cover_and_trim
from prep.captions.training import training_caption  # the one caption rule, shared with the exports
from prep.errors import ManifestError
from prep.images import open_image
from prep.records import BucketSettings, ImageRecord, Manifest, Subset, load_manifest
from prep.verify import stale_files

Size = tuple[int, int]
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Example:
    """One image as the trainer uses it: where its pixels are, what caption trains, with which rules."""

    index: int
    path: Path
    record: ImageRecord
    caption: str
    bucket: Size
    repeats: int
    is_reg: bool
    keep_tokens: int
    shuffle: bool


@dataclass(frozen=True)
class CaptionOptions:
    trigger: str | None = None
    caption_dropout: float = 0.0
    tag_dropout: float = 0.0


@dataclass(frozen=True)
class TrainingSet:
    manifest: Manifest
    root: Path
    examples: tuple[Example, ...]

    @property
    def buckets(self) -> dict[Size, int]:
        """Images (with repeats) per bucket: what one epoch holds."""
        counts: dict[Size, int] = defaultdict(int)
        for example in self.examples:
            counts[example.bucket] += example.repeats
        return dict(sorted(counts.items()))

    def caption_options(self, caption_dropout: float, tag_dropout: float) -> CaptionOptions:
        return CaptionOptions(self.manifest.trigger, caption_dropout, tag_dropout)

    def caption_variants(self, options: CaptionOptions) -> list[tuple[str, ...] | None]:
        """`caption_variants` of each example, in order: None where its caption changes from step to
        step (train.batcher caches the others' text-encoder outputs; train.plan estimates with it)."""
        return [caption_variants(e.caption, keep_tokens=e.keep_tokens, shuffle=e.shuffle, options=options)
                for e in self.examples]


def load_training_set(manifest_path: str | Path, *, keep_tokens: int | None = None,
                      shuffle_caption: bool | None = None, verify: bool = True, balance_reg: bool = False,
                      fixed_size: Size | None = None,
                      subset_for: Callable[[Manifest, Path], Callable[[ImageRecord, Subset], Subset]] | None = None,
                      ) -> TrainingSet:
    """Read and check a manifest; `verify` re-hashes every image and caption sidecar against it;
    `balance_reg` repeats or leaves out regularisation images as sd-scripts does (`balanced_reg_repeats`).

    `fixed_size` trains every image at one (width, height) instead of its bucket (sd-scripts'
    enable_bucket = false: scaled to cover it, centre-trimmed). `subset_for(manifest, root)` returns
    the subset settings each image trains with (an sd-scripts dataset config's subsets).
    """
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.json"
    manifest = load_manifest(path)
    root = path.parent
    if not manifest.images:
        raise ManifestError(f"{path}: the manifest holds no images", hint="build it with `loraprep manifest DIR`")
    if verify:
        verify_files(manifest, root)
    buckets = [fixed_size] * len(manifest.images) if fixed_size else _buckets(manifest)
    override = subset_for(manifest, root) if subset_for is not None else None
    examples = []
    for index, (record, bucket) in enumerate(zip(manifest.images, buckets, strict=True)):
        subset = manifest.subset(record.subset)
        if override is not None:
            subset = override(record, subset)
        keep = keep_tokens if keep_tokens is not None else (
            subset.keep_tokens if subset.keep_tokens is not None else manifest.keep_tokens)
        caption = training_caption(record, subset, None if subset.is_reg else manifest.trigger)
        examples.append(Example(index, root / record.path, record, caption, bucket, max(0, subset.repeats),
                                subset.is_reg, keep,
                                subset.shuffle_caption if shuffle_caption is None else shuffle_caption))
    if not any(not e.is_reg for e in examples):
        raise ManifestError(f"{path}: every image is in a regularisation subset; nothing to learn from")
    if balance_reg:
        examples = _balance_reg(examples)
    return TrainingSet(manifest, root, tuple(e for e in examples if e.repeats > 0))


def balanced_reg_repeats(train_count: int, reg_repeats: Sequence[int]) -> list[int]:
    """sd-scripts' balance: regularisation images, in order, each with its subset's repeats, until
    they count (with repeats) as many as the training images; if that takes more than one pass, the
    next passes add one repeat to each in turn. So an epoch shows as many regularisation samples as
    training samples (the first pass may overshoot by part of one image's repeats); images beyond
    that count are not used."""
    result = [0] * len(reg_repeats)
    if not reg_repeats or all(r <= 0 for r in reg_repeats):
        return result
    count, first = 0, True
    while count < train_count:
        for i, repeats in enumerate(reg_repeats):
            add = repeats if first else (1 if reg_repeats[i] > 0 else 0)
            result[i] += add
            count += add
            if count >= train_count:
                break
        first = False
    return result


def _balance_reg(examples: list[Example]) -> list[Example]:
    train_count = sum(e.repeats for e in examples if not e.is_reg)
    reg = [i for i, e in enumerate(examples) if e.is_reg]
    repeats = balanced_reg_repeats(train_count, [examples[i].repeats for i in reg])
    balanced = list(examples)
    for i, count in zip(reg, repeats, strict=True):
        balanced[i] = dataclasses.replace(examples[i], repeats=count)
    return balanced


def _buckets(manifest: Manifest) -> list[Size]:
    """Each record's bucket; records the manifest left unbucketed get one from its bucket settings."""
    missing = [r.size for r in manifest.images if r.bucket is None]
    assigned = iter(_plan(manifest.buckets).assign_all(missing)) if missing else iter(())
    return [r.bucket if r.bucket is not None else next(assigned) for r in manifest.images]


def _plan(settings: BucketSettings | None) -> BucketPlan:
    s = settings or BucketSettings()
    return BucketPlan(s.resolution, s.step, s.min, s.max, s.no_upscale)


def verify_files(manifest: Manifest, root: Path, *, limit: int = 10) -> None:
    """Refuse a manifest whose images are missing or changed, or whose captions were edited since."""
    problems = stale_files(manifest, root)
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
        raise ManifestError(f"the manifest is out of date with its files ({len(problems)} problems):\n  {shown}{more}",
                            hint="rebuild it with `loraprep manifest DIR` so the trainer sees what you edited")


def epoch_batches(examples: Sequence[Example], batch_size: int, *, seed: int, epoch: int) -> list[tuple[int, ...]]:
    """One epoch as batches of example indices: each image `repeats` times, never two buckets in a batch.

    The order depends only on (seed, epoch), so a resumed run replays it exactly.
    """
    rng = random.Random(f"loraprep-epoch:{seed}:{epoch}")
    by_bucket: dict[Size, list[int]] = defaultdict(list)
    for position, example in enumerate(examples):
        by_bucket[example.bucket].extend([position] * example.repeats)
    batches: list[tuple[int, ...]] = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        rng.shuffle(items)
        batches.extend(tuple(items[i:i + batch_size]) for i in range(0, len(items), batch_size))
    rng.shuffle(batches)
    return batches


def batches_per_epoch(examples: Sequence[Example], batch_size: int) -> int:
    counts: dict[Size, int] = defaultdict(int)
    for example in examples:
        counts[example.bucket] += example.repeats
    return sum(math.ceil(n / batch_size) for n in counts.values())


def sample_rng(seed: int, epoch: int, batch: int, slot: int) -> random.Random:
    """The generator for one sample's caption and augmentation draws (resume-safe by construction)."""
    return random.Random(f"loraprep-sample:{seed}:{epoch}:{batch}:{slot}")


def split_caption(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def process_caption(caption: str, *, keep_tokens: int, shuffle: bool, options: CaptionOptions,
                    rng: random.Random) -> str:
    """Caption dropout (whole caption → ""), then tag dropout and shuffle of the tags after the kept ones.

    The first `keep_tokens` tags, and the trigger wherever it stands up to and including its own
    position, never move and are never dropped.
    """
    if options.caption_dropout and rng.random() < options.caption_dropout:
        return ""
    fixed, rest = _kept_and_rest(caption, keep_tokens, options.trigger)
    if options.tag_dropout:
        rest = [t for t in rest if rng.random() >= options.tag_dropout]
    if shuffle:
        rng.shuffle(rest)
    return ", ".join(fixed + rest)


def _kept_and_rest(caption: str, keep_tokens: int, trigger: str | None) -> tuple[list[str], list[str]]:
    tags = split_caption(caption)
    keep = min(keep_tokens, len(tags))
    if trigger and trigger in tags:
        keep = max(keep, tags.index(trigger) + 1)
    return tags[:keep], tags[keep:]


def caption_variants(caption: str, *, keep_tokens: int, shuffle: bool,
                     options: CaptionOptions) -> tuple[str, ...] | None:
    """Every caption `process_caption` can return for this caption, or None when they are too many to
    list (tags shuffled or dropped): what lets text-encoder outputs be cached before training."""
    fixed, rest = _kept_and_rest(caption, keep_tokens, options.trigger)
    if (options.tag_dropout and rest) or (shuffle and len(rest) > 1):
        return None
    whole = ", ".join(fixed + rest)
    return (whole, "") if options.caption_dropout and whole else (whole,)


@dataclass(frozen=True)
class Placement:
    """How an image maps onto its bucket: resize target and trim box (also SDXL's crop conditioning)."""

    original: Size
    resized: Size
    trim: tuple[int, int, int, int]
    bucket: Size


def placement(image_size: Size, bucket: Size) -> Placement:
    resized, trim = cover_and_trim(image_size, bucket)
    return Placement(image_size, resized, trim, bucket)


def load_pixels(example: Example) -> tuple[Image.Image, Placement]:
    """The image scaled to cover its bucket and centre-trimmed to it, alpha flattened onto white."""
    image = open_image(example.path, flatten=WHITE)
    place = placement(image.size, example.bucket)
    if image.size != place.resized:
        image = image.resize(place.resized, Image.Resampling.LANCZOS)
    return image.crop(place.trim), place


def to_array(image: Image.Image, *, flip: bool = False) -> np.ndarray:
    """CHW float32 in [-1, 1], the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    if flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def colour_jitter(array: np.ndarray, rng: random.Random, *, strength: float = 0.1) -> np.ndarray:
    """Small brightness, contrast and per-channel shifts; teaches the LoRA less of the photo's colour cast."""
    brightness = rng.uniform(-strength, strength)
    contrast = 1.0 + rng.uniform(-strength, strength)
    channel = np.array([rng.uniform(-strength, strength) / 2 for _ in range(3)], dtype=np.float32)[:, None, None]
    mean = array.mean(axis=(1, 2), keepdims=True)
    return np.clip((array - mean) * contrast + mean + brightness + channel, -1.0, 1.0).astype(np.float32)
