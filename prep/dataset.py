"""Dataset folder → buckets and the frozen manifest.

`assign_buckets` gives every image a bucket and remembers the settings in `DIR/buckets.json`;
`build_manifest` freezes images, captions, hashes, buckets, subsets and step metadata into a
`Manifest`. Nothing here decodes pixels.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prep.atomic import write_text_atomic
from prep.buckets import BucketPlan, BucketSummary, summarise
from prep.errors import ManifestError, UsageError
from prep.images import DEFAULT_MAX_PIXELS, sha256_file, sha256_text
from prep.progress import SILENT, Reporter
from prep.records import (DEFAULT_CAPTION_EXTENSION, BucketSettings, Drop, Face, ImageRecord, Manifest,
                          Source, Subset, Tags, is_safe_relative, save_manifest)
from prep.runner import run_step
from prep.scan import ScanEntry, ScanResult, scan_folder
from prep.sidecars import check_caption_extension, read_meta
from prep.tags import split_tags

BUCKETS_FILE = "buckets.json"
MANIFEST_FILE = "manifest.json"
STEP_SECTIONS = ("crop", "clean", "tag", "normalise")


# ---------------------------------------------------------------- buckets

@dataclass(frozen=True)
class BucketReport:
    plan: BucketPlan
    assignments: dict[str, tuple[int, int]]   # rel path -> bucket
    summary: BucketSummary
    dropped: list[Drop]
    settings_file: Path | None


def plan_from_settings(settings: BucketSettings) -> BucketPlan:
    return BucketPlan(settings.resolution, settings.step, settings.min, settings.max, settings.no_upscale)


def settings_from_plan(plan: BucketPlan) -> BucketSettings:
    return BucketSettings(plan.resolution, plan.step, plan.min_size, plan.max_size, plan.no_upscale)


def saved_bucket_settings(folder: Path) -> BucketSettings | None:
    """Settings remembered by a previous `loraprep bucket` run in this folder, if any."""
    try:
        data = json.loads((folder / BUCKETS_FILE).read_text(encoding="utf-8"))
        return BucketSettings.from_dict(data["settings"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def assign_buckets(folder: str | os.PathLike[str], plan: BucketPlan, *, write: bool = True,
                   reporter: Reporter = SILENT, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   caption_extension: str = DEFAULT_CAPTION_EXTENSION) -> BucketReport:
    """Assign every image under `folder` a bucket; with `write`, remember settings in buckets.json."""
    folder = Path(folder)
    plan.buckets  # validates the settings before any work  # noqa: B018
    scan = scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels, reporter=reporter)
    sizes = [e.size for e in scan.entries]
    assigned = plan.assign_all(sizes)
    assignments = {e.rel: b for e, b in zip(scan.entries, assigned, strict=True)}
    settings_file = None
    if write:
        settings_file = folder / BUCKETS_FILE
        document = {"settings": settings_from_plan(plan).to_dict(),
                    "buckets": [list(b) for b in plan.buckets],
                    "images": {rel: list(b) for rel, b in assignments.items()}}
        write_text_atomic(settings_file, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return BucketReport(plan, assignments, summarise(sizes, assigned), scan.dropped, settings_file)


# ---------------------------------------------------------------- manifest

@dataclass(frozen=True)
class ManifestOptions:
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    trigger: str | None = None
    keep_tokens: int | None = None       # None: 1 when a trigger is set, else 0
    repeats: int | None = None           # None: from kohya N_name folders, else 1
    class_tokens: str | None = None
    reg_dirs: tuple[Path, ...] = ()
    reg_repeats: int = 1
    buckets: BucketSettings | None = None  # None: buckets.json's settings, else the defaults
    allow_empty_captions: bool = False
    shuffle_caption: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS


@dataclass
class ManifestBuild:
    manifest: Manifest
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> list[Drop]:
        return list(self.manifest.dropped)


def _frozen_caption(caption: str, trigger: str | None) -> tuple[str, bool]:
    """The caption that trains: the trigger is put first when it is missing (reported, not silent)."""
    if not trigger:
        return caption, False
    tags = split_tags(caption)
    if tags and tags[0] == trigger:
        return caption, False
    rest = [t for t in tags if t != trigger]
    return ", ".join([trigger, *rest]), True


def _record(entry: ScanEntry, rel: str, subset: str, bucket: tuple[int, int], caption: str,
            sidecar_caption: str | None) -> ImageRecord:
    meta = read_meta(entry.path)
    faces = meta.get("faces")
    return ImageRecord(
        path=rel, sha256=sha256_file(entry.path), width=entry.info.width, height=entry.info.height,
        caption=caption, caption_sha256=sha256_text(sidecar_caption) if sidecar_caption is not None else None,
        source=Source.from_dict(meta["source"]) if isinstance(meta.get("source"), dict) else None,
        faces=tuple(Face.from_dict(f) for f in faces) if isinstance(faces, list) else None,
        tags=Tags.from_dict(meta["tags"]) if isinstance(meta.get("tags"), dict) else None,
        bucket=bucket, subset=subset,
        extra={k: meta[k] for k in STEP_SECTIONS if k in meta},
    )


def _import_reg_dir(root: Path, reg: Path, notes: list[str]) -> Path:
    """Regularisation images must live inside the dataset folder (manifest paths never escape)."""
    reg = reg.resolve()
    if reg == root or root in reg.parents:
        return reg
    target = root / "reg" / reg.name
    if not target.exists():
        shutil.copytree(reg, target, symlinks=False)
        notes.append(f"copied regularisation images from {reg} into {target} (manifest paths stay inside the dataset)")
    return target


def _subset_for(entry: ScanEntry, options: ManifestOptions) -> Subset:
    if entry.repeat_folder is not None:
        folder = entry.repeat_folder
        return Subset(name=folder.folder, repeats=options.repeats or folder.repeats,
                      class_tokens=options.class_tokens or folder.class_tokens,
                      shuffle_caption=options.shuffle_caption)
    return Subset(name="main", repeats=options.repeats or 1, class_tokens=options.class_tokens,
                  shuffle_caption=options.shuffle_caption)


def build_manifest(folder: str | os.PathLike[str], options: ManifestOptions = ManifestOptions(), *,
                   manifest_path: str | os.PathLike[str] | None = None,
                   reporter: Reporter = SILENT) -> ManifestBuild:
    """Freeze the dataset in `folder` into a Manifest (not yet written; see `write_manifest`).

    Raises ManifestError listing every image without a caption unless `allow_empty_captions`.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise UsageError(f"{folder} is not a folder")
    extension = check_caption_extension(options.caption_extension)
    base = Path(manifest_path).resolve().parent if manifest_path else root
    notes: list[str] = []
    bucket_settings = options.buckets or saved_bucket_settings(root) or BucketSettings()
    plan = plan_from_settings(bucket_settings)
    plan.buckets  # validate  # noqa: B018

    reg_roots = [_import_reg_dir(root, Path(r), notes) for r in options.reg_dirs]
    main_scan = scan_folder(root, caption_extension=extension, max_pixels=options.max_pixels, reporter=reporter)
    reg_scans = [scan_folder(r, caption_extension=extension, max_pixels=options.max_pixels, reporter=reporter)
                 for r in reg_roots]
    reg_paths = {e.path.resolve() for scan in reg_scans for e in scan.entries}

    jobs: list[tuple[ScanEntry, Subset]] = []
    for entry in main_scan.entries:
        if entry.path.resolve() not in reg_paths:
            jobs.append((entry, _subset_for(entry, options)))
    for reg_root, scan in zip(reg_roots, reg_scans, strict=True):
        subset = Subset(name=f"reg:{reg_root.name}", repeats=options.reg_repeats, is_reg=True,
                        class_tokens=options.class_tokens, shuffle_caption=options.shuffle_caption)
        jobs.extend((entry, subset) for entry in scan.entries)

    missing = [e for e, s in jobs if not (e.caption or "").strip() and not s.is_reg]
    if missing and not options.allow_empty_captions:
        listed = "\n  ".join(_rel(e.path, base) for e in missing[:20])
        more = f"\n  … and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ManifestError(
            f"{len(missing)} image(s) have no caption ({extension} sidecar missing or empty):\n  {listed}{more}",
            hint="caption them (`loraprep tag DIR`, or write the sidecars), or pass --allow-empty-captions "
                 "to train those with an empty caption (class tokens only)",
        )

    buckets = dict(zip((e.path for e, _ in jobs), plan.assign_all([e.size for e, _ in jobs]), strict=True))
    retriggered = 0

    def freeze(job: tuple[ScanEntry, Subset]) -> ImageRecord:
        nonlocal retriggered
        entry, subset = job
        rel = _rel(entry.path, base)
        if not is_safe_relative(rel):
            raise UsageError(f"manifest at {base} cannot refer to {entry.path}: it is outside the manifest's folder",
                             hint="write the manifest inside (or above) the dataset folder")
        caption, changed = _frozen_caption(entry.caption or "", None if subset.is_reg else options.trigger)
        retriggered += changed
        return _record(entry, rel, subset.name, buckets[entry.path], caption, entry.caption)

    frozen = run_step(jobs, freeze, step="manifest", name=lambda j: _rel(j[0].path, base),
                      reporter=reporter, label="hashing", workers=4)
    if retriggered:
        notes.append(f"trigger '{options.trigger}' put first in {retriggered} caption(s) in the manifest "
                     f"(sidecars unchanged; `loraprep captions move-first` fixes them on disk)")
    if missing:
        notes.append(f"{len(missing)} image(s) train with an empty caption (--allow-empty-captions)")

    subsets = list(dict.fromkeys(s for _, s in jobs)) or [_subset_for_empty(options)]
    keep_tokens = options.keep_tokens if options.keep_tokens is not None else (1 if options.trigger else 0)
    dropped = [*main_scan.dropped, *(d for s in reg_scans for d in s.dropped), *frozen.dropped]
    manifest = Manifest(images=tuple(frozen.done), subsets=tuple(_unique_subsets(subsets)),
                        buckets=bucket_settings, caption_extension=extension, trigger=options.trigger,
                        keep_tokens=keep_tokens, dropped=tuple(dropped))
    return ManifestBuild(manifest, notes)


def _subset_for_empty(options: ManifestOptions) -> Subset:
    return Subset(name="main", repeats=options.repeats or 1, class_tokens=options.class_tokens)


def _unique_subsets(subsets: list[Subset]) -> list[Subset]:
    by_name: dict[str, Subset] = {}
    for subset in subsets:
        by_name.setdefault(subset.name, subset)
    return list(by_name.values())


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base)).as_posix()


def write_manifest(build: ManifestBuild, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    save_manifest(build.manifest, path)
    return path


def default_manifest_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / MANIFEST_FILE


def scan_summary(scan: ScanResult) -> dict:
    """Machine-readable scan result (`loraprep scan --json`)."""
    return {
        "root": str(scan.root),
        "images": [{"path": e.rel, "width": e.info.width, "height": e.info.height, "format": e.info.format,
                    "mode": e.info.mode, "orientation": e.info.orientation, "aspect": round(e.aspect, 4),
                    "caption": e.caption,
                    "repeats": e.repeat_folder.repeats if e.repeat_folder else None,
                    "class_tokens": e.repeat_folder.class_tokens if e.repeat_folder else None}
                   for e in scan.entries],
        "problems": [d.to_dict() for d in scan.dropped],
        "warnings": [d.to_dict() for d in scan.warnings],
    }
