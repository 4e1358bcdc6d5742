"""What the doctor examines: a dataset folder, or a manifest, read into one shape.

A folder is scanned (headers only) with its caption sidecars and `.loraprep.json` metadata; its
`manifest.json` and `buckets.json`, when present, supply the trigger, class tokens and bucket
settings the checks need. A manifest gives all of that frozen, and its images are read from disk
beside it. Options given explicitly win over both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prep.buckets import BucketPlan
from prep.captions.dataset import CaptionDataset, CaptionFile, load_dataset
from prep.dataset import MANIFEST_FILE, plan_from_settings, saved_bucket_settings
from prep.errors import LoraprepError, UsageError
from prep.images import DEFAULT_MAX_PIXELS
from prep.naming import sidecar_groups
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, BucketSettings, Drop, Manifest, load_manifest
from prep.scan import scan_folder
from prep.sidecars import check_caption_extension, read_meta

Size = tuple[int, int]


@dataclass(frozen=True)
class DoctorOptions:
    """What `diagnose` checks and how strictly. None / () mean "from the dataset"."""

    trigger: str | None = None
    class_tokens: tuple[str, ...] = ()
    buckets: BucketPlan | None = None   # None: the manifest's or buckets.json's settings, else 512²
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    blur_sensitivity: float = 3.0       # robust spreads below the dataset's median that count as blurry
    common_share: float = 0.9           # a tag in this share of images is a pruning candidate
    max_tokens: int = 75
    tokenizer: Path | None = None

    def check(self) -> DoctorOptions:
        if not 0 < self.common_share <= 1:
            raise UsageError(f"--common {self.common_share}: give a share of images between 0 and 1, e.g. 0.9")
        if self.blur_sensitivity <= 0:
            raise UsageError("--blur-sensitivity must be positive (3 is the default; lower flags more)")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        return self


@dataclass(frozen=True)
class Item:
    """One image: where it is, its displayed size, its caption and what earlier steps recorded."""

    path: Path                    # on disk
    rel: str                      # relative to the root, POSIX; how findings name it
    size: Size
    caption: str | None
    faces: tuple | None = None    # None: no detector ran; (): one ran and found no face
    crop: dict = field(default_factory=dict)  # the `crop` section of its metadata ({}: not a crop)
    bucket: Size | None = None    # frozen in a manifest; else assigned from the plan


@dataclass(frozen=True)
class DoctorInput:
    root: Path                    # paths are relative to it; quarantine lives under it
    kind: Literal["folder", "manifest"]
    label: str                    # how fix commands name the dataset (as the user gave it)
    items: tuple[Item, ...]
    dropped: tuple[Drop, ...]
    captions: CaptionDataset
    plan: BucketPlan
    trigger: str | None
    class_tokens: tuple[str, ...]
    manifest: Path | None         # the manifest involved, if any (stale after a quarantine)
    shared: tuple[tuple[str, ...], ...] = ()  # images sharing one caption/metadata file (prep.naming)


def _plan(settings: BucketSettings | None) -> BucketPlan | None:
    return plan_from_settings(settings) if settings is not None else None


def _class_tokens(manifest: Manifest | None) -> tuple[str, ...]:
    if manifest is None:
        return ()
    return tuple(dict.fromkeys(s.class_tokens for s in manifest.subsets if s.class_tokens and not s.is_reg))


def _quiet_manifest(path: Path) -> Manifest | None:
    """The folder's manifest for its settings, or None when absent or unreadable (not an error:
    the folder itself is what is examined)."""
    try:
        return load_manifest(path) if path.is_file() else None
    except LoraprepError:
        return None


def _from_folder(root: Path, label: str, options: DoctorOptions, reporter: Reporter) -> DoctorInput:
    extension = check_caption_extension(options.caption_extension)
    scan = scan_folder(root, caption_extension=extension, max_pixels=options.max_pixels, reporter=reporter)
    manifest_path = root / MANIFEST_FILE
    manifest = _quiet_manifest(manifest_path)
    items = []
    for entry in scan.entries:
        meta = read_meta(entry.path)
        faces = meta.get("faces")
        crop = meta.get("crop")
        items.append(Item(entry.path, entry.rel, entry.size, entry.caption,
                          tuple(faces) if isinstance(faces, list) else None,
                          crop if isinstance(crop, dict) else {}))
    plan = (options.buckets or _plan(saved_bucket_settings(root))
            or _plan(manifest.buckets if manifest else None) or BucketPlan())
    shared = tuple(tuple(image.relative_to(root).as_posix() for image in group)
                   for group in sidecar_groups([entry.path for entry in scan.entries], extension))
    return DoctorInput(root, "folder", label, tuple(items), tuple(scan.dropped), load_dataset(root, extension),
                       plan, options.trigger or (manifest.trigger if manifest else None),
                       options.class_tokens or _class_tokens(manifest),
                       manifest_path if manifest is not None else None, shared)


def _from_manifest(path: Path, label: str, options: DoctorOptions) -> DoctorInput:
    manifest = load_manifest(path)
    root = path.parent
    items, files = [], []
    for record in manifest.images:
        crop = record.extra.get("crop")
        items.append(Item(root / record.path, record.path, record.size, record.caption,
                          record.faces, crop if isinstance(crop, dict) else {}, record.bucket))
        caption = Path(record.path).with_suffix(manifest.caption_extension).as_posix()
        raw = None if record.caption is None else (record.caption + "\n").encode("utf-8")
        files.append(CaptionFile.make(caption, record.path, raw))
    plan = options.buckets or _plan(manifest.buckets) or BucketPlan()
    return DoctorInput(root, "manifest", label, tuple(items), (),
                       CaptionDataset(root, manifest.caption_extension, tuple(files)), plan,
                       options.trigger or manifest.trigger, options.class_tokens or _class_tokens(manifest),
                       path)


def load_input(target: str | os.PathLike[str], options: DoctorOptions = DoctorOptions(),
               reporter: Reporter = SILENT) -> DoctorInput:
    """A dataset folder (searched recursively) or a manifest file, ready to examine."""
    path = Path(target)
    if path.is_file():  # fix commands name the dataset folder: the manifest's own
        found = _from_manifest(path, str(path.parent), options)
    elif path.is_dir():
        found = _from_folder(path, str(target), options, reporter)
    else:
        raise UsageError(f"{target} is neither a dataset folder nor a manifest file",
                         hint="pass the folder of images and captions, or its manifest.json")
    if not found.items and not found.dropped:
        raise UsageError(f"no images in {target}", hint="pass the dataset folder (images are searched recursively)")
    return found
