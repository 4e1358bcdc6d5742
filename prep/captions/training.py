"""The caption each image trains on: one rule shared by the trainer and every export.

It lives in `prep/` so that `export --format imagefolder` (and anything else that hands the dataset
to another trainer) writes exactly the captions `loraprep train` trains, and `train/` imports it
from here as it imports the manifest types.
"""

from __future__ import annotations

from prep.captions.dataset import split_caption
from prep.images import sha256_text
from prep.records import ImageRecord, Manifest, Subset

_BLANK_SHA256 = sha256_text("")


def training_caption(record: ImageRecord, subset: Subset, trigger: str | None) -> str:
    """The caption an image trains on, by sd-scripts' rule: its own caption when it has one, else its
    subset's class tokens.

    An image has no caption when its sidecar was missing or blank (the manifest may have put the
    trigger alone in it). Such an image then trains on "identifier class" (`sks woman`), the
    DreamBooth prompt the class tokens stand for: the trigger is put before class tokens that do not
    already name it, as a `10_sks woman` folder spells it. Regularisation images pass trigger=None
    and train on the class alone. Without class tokens the caption stays as frozen (trigger or empty).
    """
    caption = record.caption or ""
    uncaptioned = record.caption_sha256 in (None, _BLANK_SHA256) and set(split_caption(caption)) <= {trigger}
    if not uncaptioned or not subset.class_tokens:
        return caption
    class_tokens = subset.class_tokens.strip()
    if trigger and trigger not in class_tokens.replace(",", " ").split():
        return f"{trigger} {class_tokens}"
    return class_tokens


def manifest_training_caption(manifest: Manifest, record: ImageRecord) -> str:
    """`training_caption` with the manifest's own subset and trigger rules (no trigger for
    regularisation images)."""
    subset = manifest.subset(record.subset)
    return training_caption(record, subset, None if subset.is_reg else manifest.trigger)
