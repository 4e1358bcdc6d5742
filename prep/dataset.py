"""Dataset folder → buckets and the frozen manifest.

`assign_buckets` gives every image a bucket and remembers the settings in `DIR/buckets.json`;
`build_manifest` freezes images, captions, hashes, buckets, subsets and step metadata into a
`Manifest`. Nothing here decodes pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from prep.atomic import TEMP_SUFFIX, sweep_leftovers, temp_prefix, write_text_atomic
from prep.buckets import BucketPlan, BucketSummary, summarise
from prep.errors import LoraprepError, ManifestError, UsageError
from prep.images import DEFAULT_MAX_PIXELS, sha256_file, sha256_text
from prep.naming import shares_sidecars, sidecar_groups
from prep.progress import SILENT, Reporter
from prep.records import (DEFAULT_CAPTION_EXTENSION, BucketSettings, Drop, Face, ImageRecord, Manifest,
                          Source, Subset, Tags, is_safe_relative, is_within, load_manifest,
                          save_manifest)
from prep.runner import run_step
from prep.scan import REPEAT_FOLDER, NoImages, RepeatFolder, ScanEntry, ScanResult, require_images, scan_folder
from prep.sidecars import caption_path, check_caption_extension, meta_path, read_meta
from prep.subjectmask import mask_path, mask_ref
from prep.tags import split_tags
from prep.walk import copy_ignoring

BUCKETS_FILE = "buckets.json"
REG_PREFIX = "reg:"  # regularisation subsets are named reg:FOLDER (or reg:FOLDER/N_word)
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


def bucket_plan(resolution: tuple[int, int], step: int = 64, min_size: int | None = None,
                max_size: int | None = None, no_upscale: bool = False) -> BucketPlan:
    """A validated bucket plan from the user's flags; defaults (min 256, max 2× the resolution) are
    rounded to the step, so an error only ever names values the user gave, with what to pass."""
    if step <= 0 or step % 8:
        raise UsageError(f"--step {step}: the bucket step must be a positive multiple of 8",
                         hint="64 for SD1/SD2, 32 or 64 for SDXL")
    for side in resolution:
        if side % step:
            down, up = max(step, side // step * step), (side // step + 1) * step
            shown = "x".join(map(str, resolution)) if resolution[0] != resolution[1] else str(side)
            raise UsageError(f"--resolution {shown}: {side} is not a multiple of the bucket step {step}",
                             hint=f"pass --resolution {up} or {down}")
    if min_size is None:
        min_size = -(-256 // step) * step
    if max_size is None:
        max_size = max(2 * max(resolution), -(-min_size // step) * step)
    plan = BucketPlan(resolution, step, min_size, max_size, no_upscale)
    plan.buckets  # the remaining checks name --min/--max, which the user gave  # noqa: B018
    return plan


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
    scan = require_images(scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels,
                                      reporter=reporter), "there is nothing to bucket")
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
    """What to freeze. `None` means "not given": a rebuild keeps the previous manifest's value (see
    `keep_previous`), else the default applies. An empty string clears a trigger or class tokens."""

    caption_extension: str | None = None  # None: the previous manifest's, else .txt
    trigger: str | None = None
    keep_tokens: int | None = None       # None: previous, else 1 when a trigger is set, else 0
    repeats: int | None = None           # None: previous, else from kohya N_name folders, else 1
    class_tokens: str | None = None
    reg_dirs: tuple[Path, ...] = ()
    reg_repeats: int | None = None       # None: previous, else from an N_name reg folder, else 1
    buckets: BucketSettings | None = None  # None: buckets.json's settings, else previous, else defaults
    allow_empty_captions: bool = False
    shuffle_caption: bool | None = None  # None: previous, else True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    keep_previous: bool = True           # False: ignore an existing manifest's settings (--reset)

    def validate(self) -> None:
        """Refuse values sd-scripts and the trainer cannot mean (checked before anything is read)."""
        for flag, value in (("--repeats", self.repeats), ("--reg-repeats", self.reg_repeats)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} {value}: repeats must be 1 or more",
                                 hint="repeats is how many times each image is seen per epoch")
        if self.keep_tokens is not None and self.keep_tokens < 0:
            raise UsageError(f"--keep-tokens {self.keep_tokens}: must be 0 or more")


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
            sidecar_caption: str | None, meta_inside: bool = True) -> ImageRecord:
    meta = read_meta(entry.path) if meta_inside else {}
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
    """Regularisation images must live inside the dataset folder (manifest paths never escape).

    Outside ones are copied in under a temporary name first, so a killed copy never passes for a
    complete one on the next run.
    """
    reg = reg.resolve()
    if not reg.is_dir():
        raise UsageError(f"--reg {reg} is not a folder of images")
    if reg == root or root in reg.parents:
        return reg
    target = root / "reg" / reg.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX, dir=target.parent))
        try:
            shutil.copytree(reg, partial, symlinks=False, dirs_exist_ok=True, ignore=copy_ignoring(reg))
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        notes.append(f"copied regularisation images from {reg} into {target} (manifest paths stay inside the dataset)")
    return target


@dataclass(frozen=True)
class Previous:
    """The settings of the manifest being replaced, which a rebuild keeps unless told otherwise."""

    manifest: Manifest
    reg_roots: tuple[Path, ...]

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.manifest.subsets if s.name == name), None)


def previous_manifest(path: Path, root: Path, notes: list[str]) -> Previous | None:
    """The manifest at `path` if there is a readable one (a broken one is noted, not fatal: it is
    about to be replaced)."""
    if not path.is_file():
        return None
    try:
        manifest = load_manifest(path)
    except LoraprepError as exc:
        notes.append(f"the previous manifest could not be read, so none of its settings were kept ({exc.message})")
        return None
    return Previous(manifest, tuple(_previous_reg_roots(manifest, path.parent.resolve(), root, notes)))


def _previous_reg_roots(manifest: Manifest, base: Path, root: Path, notes: list[str]) -> list[Path]:
    """The folders the previous manifest's regularisation subsets came from (`reg:NAME[/N_word]`):
    the nearest folder called NAME above each subset's images."""
    roots: dict[Path, None] = {}
    for subset in manifest.subsets:
        if not subset.is_reg or not subset.name.startswith(REG_PREFIX):
            continue
        name, _, inner = subset.name[len(REG_PREFIX):].partition("/")
        record = next((r for r in manifest.images if r.subset == subset.name), None)
        if record is None:
            continue
        parts = PurePosixPath(record.path).parent.parts
        inner_parts = tuple(PurePosixPath(inner).parts) if inner else ()
        found = [i for i, part in enumerate(parts) if part == name and parts[i + 1:i + 1 + len(inner_parts)] == inner_parts]
        if not found:
            continue
        folder = (base / Path(*parts[:found[-1] + 1])).resolve()
        if folder.is_dir() and (folder == root or root in folder.parents):
            roots.setdefault(folder)
        else:
            notes.append(f"regularisation folder {folder} of the previous manifest is gone; not kept")
    return list(roots)


def _repeat_folder_of_reg(reg_root: Path, entry: ScanEntry) -> RepeatFolder | None:
    """kohya's `N_word` naming for a reg folder: the folder itself (`reg/1_woman/`) or one inside it."""
    if entry.repeat_folder is not None:
        return entry.repeat_folder
    match = REPEAT_FOLDER.match(reg_root.name)
    return RepeatFolder(int(match.group(1)), match.group(2).strip(), "") if match else None


def _subset_for(entry: ScanEntry, options: ManifestOptions, previous: Previous | None) -> Subset:
    folder = entry.repeat_folder
    name = folder.folder if folder is not None else "main"
    before = previous.subset(name) if previous else None
    repeats = options.repeats or (before.repeats if before else None) or (folder.repeats if folder else 1)
    if options.class_tokens is not None:
        class_tokens = options.class_tokens or None
    elif before is not None:
        class_tokens = before.class_tokens
    else:
        class_tokens = folder.class_tokens if folder else None
    return Subset(name=name, repeats=repeats, class_tokens=class_tokens,
                  keep_tokens=before.keep_tokens if before else None,
                  shuffle_caption=_shuffle(options, before))


def _reg_subset_for(reg_root: Path, entry: ScanEntry, options: ManifestOptions, previous: Previous | None) -> Subset:
    folder = _repeat_folder_of_reg(reg_root, entry)
    name = REG_PREFIX + reg_root.name + (f"/{folder.folder}" if folder is not None and folder.folder else "")
    before = previous.subset(name) if previous else None
    repeats = options.reg_repeats or (before.repeats if before else None) or (folder.repeats if folder else 1)
    if folder is not None:
        class_tokens: str | None = folder.class_tokens
    elif before is not None:
        class_tokens = before.class_tokens
    else:
        class_tokens = options.class_tokens or None
    return Subset(name=name, repeats=repeats, is_reg=True, class_tokens=class_tokens,
                  keep_tokens=before.keep_tokens if before else None,
                  shuffle_caption=_shuffle(options, before))


def _shuffle(options: ManifestOptions, before: Subset | None) -> bool:
    """Given, else the previous manifest's, else on (sd-scripts shuffles after keep_tokens)."""
    if options.shuffle_caption is not None:
        return options.shuffle_caption
    return before.shuffle_caption if before is not None else True


def _settings(options: ManifestOptions, previous: Previous | None, root: Path,
              notes: list[str]) -> tuple[ManifestOptions, BucketSettings, list[str]]:
    """Options with every setting not given taken from the previous manifest, the bucket settings,
    and a description of what was kept (for the note the CLI prints)."""
    kept: list[str] = []
    before = previous.manifest if previous else None
    extension = options.caption_extension or (before.caption_extension if before else DEFAULT_CAPTION_EXTENSION)
    if before is not None and options.caption_extension is None and extension != DEFAULT_CAPTION_EXTENSION:
        kept.append(f"caption extension {extension}")
    trigger = options.trigger
    if trigger is None and before is not None and before.trigger:
        trigger = before.trigger
        kept.append(f"trigger '{trigger}'")
    trigger = trigger or None
    keep_tokens = options.keep_tokens
    if keep_tokens is None and before is not None and trigger == before.trigger:
        keep_tokens = before.keep_tokens
        if keep_tokens != (1 if trigger else 0):
            kept.append(f"keep_tokens {keep_tokens}")
    reg_dirs = tuple(options.reg_dirs)
    if previous is not None:
        given = {Path(r).resolve() for r in reg_dirs}
        extra = tuple(r for r in previous.reg_roots if r not in given)
        if extra:
            kept.append("regularisation folder(s) " + ", ".join(_rel(r, root) or "." for r in extra))
        reg_dirs += extra
    buckets = options.buckets or saved_bucket_settings(root)
    if buckets is None and before is not None and before.buckets is not None:
        buckets = before.buckets
        kept.append("bucket settings " + _describe_buckets(buckets))
    elif before is not None and before.buckets is not None and buckets != before.buckets and options.buckets is None:
        notes.append(f"bucket settings from {BUCKETS_FILE} ({_describe_buckets(buckets)}) replace the previous "
                     f"manifest's ({_describe_buckets(before.buckets)})")
    merged = dataclasses.replace(options, caption_extension=extension, trigger=trigger, keep_tokens=keep_tokens,
                                 reg_dirs=reg_dirs)
    return merged, buckets or BucketSettings(), kept


def _describe_buckets(b: BucketSettings) -> str:
    return (f"{b.resolution[0]}×{b.resolution[1]}, step {b.step}, {b.min}–{b.max}"
            + (", no upscale" if b.no_upscale else ""))


def _kept_subset_settings(subsets: list[Subset], previous: Previous | None, options: ManifestOptions) -> list[str]:
    """Per-subset settings a rebuild took from the previous manifest (repeats, class tokens)."""
    if previous is None:
        return []
    kept = []
    for subset in subsets:
        before = previous.subset(subset.name)
        if before is None:
            continue
        given_repeats = options.reg_repeats if subset.is_reg else options.repeats
        if given_repeats is None and before.repeats != 1:
            kept.append(f"{subset.name} ×{before.repeats}")
        if not subset.is_reg and options.class_tokens is None and before.class_tokens:
            kept.append(f"{subset.name} class tokens '{before.class_tokens}'")
    return kept


def build_manifest(folder: str | os.PathLike[str], options: ManifestOptions = ManifestOptions(), *,
                   manifest_path: str | os.PathLike[str] | None = None,
                   reporter: Reporter = SILENT) -> ManifestBuild:
    """Freeze the dataset in `folder` into a Manifest (not yet written; see `write_manifest`).

    A manifest already at `manifest_path` (default FOLDER/manifest.json) is being rebuilt: its
    settings (trigger, keep_tokens, per-subset repeats and class tokens, regularisation folders,
    caption extension, bucket settings) are kept unless `options` changes them, and a note says
    which were kept. Raises ManifestError listing every image without a caption unless
    `allow_empty_captions`.
    """
    options.validate()
    root = Path(folder).resolve()
    if not root.is_dir():
        raise UsageError(f"{folder} is not a folder")
    target = Path(manifest_path) if manifest_path else default_manifest_path(root)
    base = target.resolve().parent
    notes: list[str] = []
    if note := sweep_leftovers(root):
        notes.append(note)
    previous = previous_manifest(target, root, notes) if options.keep_previous else None
    options, bucket_settings, kept = _settings(options, previous, root, notes)
    extension = check_caption_extension(options.caption_extension or DEFAULT_CAPTION_EXTENSION)
    plan = plan_from_settings(bucket_settings)
    plan.buckets  # validate  # noqa: B018

    reg_roots = list(dict.fromkeys(_import_reg_dir(root, Path(r), notes) for r in options.reg_dirs))
    main_scan = scan_folder(root, caption_extension=extension, max_pixels=options.max_pixels, reporter=reporter)
    reg_scans = [scan_folder(r, caption_extension=extension, max_pixels=options.max_pixels, reporter=reporter)
                 for r in reg_roots]
    reg_paths = {e.path.resolve() for scan in reg_scans for e in scan.entries}
    if not main_scan.entries and not main_scan.dropped:
        raise NoImages.in_folder(folder, "there is nothing to freeze (no manifest written)")

    jobs: list[tuple[ScanEntry, Subset]] = []
    for entry in main_scan.entries:
        if entry.path.resolve() not in reg_paths:
            jobs.append((entry, _subset_for(entry, options, previous)))
    for reg_root, scan in zip(reg_roots, reg_scans, strict=True):
        jobs.extend((entry, _reg_subset_for(reg_root, entry, options, previous)) for entry in scan.entries)

    shared = _sharing_sidecars([e.path for e, _ in jobs], extension, base)
    jobs = [(e, s) for e, s in jobs if e.path not in shared]
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
    real_root = os.path.realpath(root)

    def freeze(job: tuple[ScanEntry, Subset]) -> ImageRecord:
        nonlocal retriggered
        entry, subset = job
        rel = _rel(entry.path, base)
        if not _within(entry.path, real_root):
            raise UsageError(f"{entry.path} resolves outside the dataset folder {root} through a symlink",
                             hint="copy the file into the dataset; manifests never refer outside it")
        if not is_safe_relative(rel):
            raise UsageError(f"manifest at {base} cannot refer to {entry.path}: it is outside the manifest's folder",
                             hint="write the manifest inside (or above) the dataset folder")
        sidecar = caption_path(entry.path, extension)
        if (sidecar.exists() or sidecar.is_symlink()) and not _within(sidecar, real_root):
            raise UsageError(f"caption {sidecar.name} links outside the dataset folder {root}",
                             hint="replace the link with the caption file itself")
        caption, changed = _frozen_caption(entry.caption or "", None if subset.is_reg else options.trigger)
        retriggered += changed
        meta_inside = _within(meta_path(entry.path), real_root)
        record = _record(entry, rel, subset.name, buckets[entry.path], caption, entry.caption, meta_inside)
        mask = mask_path(entry.path)
        if mask.is_file() and _within(mask, real_root):  # its subject mask sidecar (prep.subjectmask)
            record = record.evolve(mask=mask_ref(mask, _rel(mask, base), read_meta(entry.path) if meta_inside else {}))
        return record

    frozen = run_step(jobs, freeze, step="manifest", name=lambda j: _rel(j[0].path, base),
                      reporter=reporter, label="hashing", workers=4)
    if retriggered:
        notes.append(f"trigger '{options.trigger}' put first in {retriggered} caption(s) in the manifest "
                     f"(sidecars unchanged; `loraprep captions move-first` fixes them on disk)")
    if missing:
        notes.append(f"{len(missing)} image(s) train with an empty caption (--allow-empty-captions)")

    subsets = _unique_subsets([s for _, s in jobs]) or [_subset_for_empty(options)]
    kept += _kept_subset_settings(subsets, previous, options)
    if kept:
        notes.insert(0, "kept from the previous manifest: " + "; ".join(kept)
                     + " (a flag changes one; --reset starts from the defaults)")
    keep_tokens = options.keep_tokens if options.keep_tokens is not None else (1 if options.trigger else 0)
    dropped = [*main_scan.dropped, *(d for s in reg_scans for d in s.dropped), *shared.values(), *frozen.dropped]
    manifest = Manifest(images=tuple(frozen.done), subsets=tuple(subsets),
                        buckets=bucket_settings, caption_extension=extension, trigger=options.trigger,
                        keep_tokens=keep_tokens, dropped=tuple(dropped))
    return ManifestBuild(manifest, notes)


def _sharing_sidecars(images: list[Path], extension: str, base: Path) -> dict[Path, Drop]:
    """Images that share their caption and metadata files with another, each with why it is left
    out: the caption (and the source and crop box in the metadata) may be the other picture's."""
    return {image: Drop(_rel(image, base), "manifest",
                        shares_sidecars(_rel(group[1] if image == group[0] else group[0], base),
                                        caption_path(image, extension).name))
            for group in sidecar_groups(images, extension) for image in group}


def _within(path: Path, real_root: str) -> bool:
    return is_within(os.path.realpath(path), real_root)


def _subset_for_empty(options: ManifestOptions) -> Subset:
    return Subset(name="main", repeats=options.repeats or 1, class_tokens=options.class_tokens or None)


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
