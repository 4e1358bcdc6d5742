"""`loraprep prep SRC --out DST`: the whole dataset pipeline in one call.

crop (or a plain normalising copy) → clean → tag → fallback captions → bucket → manifest.
Each step can be switched off; a step whose model is missing is skipped with the reason and
the pipeline goes on. Source images are never modified: every step writes inside DST.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prep.buckets import BucketPlan
from prep.captions.dataset import read_current
from prep.captions.journal import FileState, Written, apply_changes, write_all
from prep.carrycaption import shown
from prep.dataset import ManifestOptions, assign_buckets, build_manifest, default_manifest_path, write_manifest
from prep.errors import ModelNotAvailable, ModelMismatch, UsageError
from prep.normalise import NormaliseOptions, normalise_folder
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Drop, Manifest
from prep.atomic import sweep_leftovers
from prep.scan import NoImages, has_images, walk_images
from prep.sidecars import caption_bytes, caption_path
from prep.walk import check_separate

Status = Literal["ran", "skipped", "off"]


@dataclass(frozen=True)
class StepReport:
    name: str
    status: Status
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class PrepOptions:
    """Sub-step options; `None` switches a step off. Option types live with their steps
    (`prep.crop.CropOptions`, `prep.background.CleanOptions`, `prep.tag.TagOptions`)."""

    crop: Any | None = None
    clean: Any | None = None
    tag: Any | None = None
    buckets: BucketPlan = BucketPlan()
    trigger: str | None = None
    class_tokens: str | None = None
    repeats: int | None = None
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    overwrite_captions: bool = False  # the copy step's (crop has its own in CropOptions)


@dataclass
class PrepReport:
    out: Path
    steps: list[StepReport] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    manifest_path: Path | None = None
    manifest: Manifest | None = None
    notes: list[str] = field(default_factory=list)
    doctor: Any = None  # prep.doctor.DoctorReport of the finished dataset


def _check_folders(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise UsageError(f"{src} is not a folder of images")
    check_separate(src, out)


def _blank(data: bytes | None) -> bool:
    """No caption file, or one holding only whitespace: what the fallback caption may fill."""
    if data is None:
        return True
    try:
        return not data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:  # not text: reported (and the image dropped) by the manifest step
        return False


def fallback_states(folder: Path, extension: str, text: str) -> list[FileState]:
    """`text` as the caption of every image whose caption is missing or blank, with the exact
    bytes found there (what the write re-checks); nothing is written."""
    states = []
    for image in walk_images(folder, []):
        caption = caption_path(image, extension).relative_to(folder).as_posix()
        before = read_current(folder, caption)
        if _blank(before):
            states.append(FileState(caption, before, caption_bytes(text)))
    return states


def write_fallback(folder: Path, states: Sequence[FileState]) -> Written:
    """Write fallback captions, each only while its file still holds the bytes read: a caption
    someone else wrote meanwhile wins (it is in `conflicts`). A blank caption file is someone's
    file, so replacing it goes through the journal (`loraprep captions undo` restores it); a
    caption that did not exist is created, with nothing to journal."""
    blank = [state for state in states if state.before is not None]
    missing = [state for state in states if state.before is None]
    replaced = apply_changes(folder, f"prep fallback captions ({len(blank)} blank caption(s) filled)", blank)
    done = write_all(folder, [(state.caption, None, state.after) for state in missing])
    created = [state for state in missing if state.caption in done]
    conflicts = [*replaced.conflicts, *(state.caption for state in missing if state.caption not in done)]
    return Written((*replaced.written, *created), tuple(sorted(conflicts)), replaced.entry)


def _fallback_captions(folder: Path, options: PrepOptions, report: PrepReport) -> bool:
    """Caption untagged images with the trigger/class tokens; returns whether empty captions remain."""
    text = ", ".join(w for w in (options.trigger, options.class_tokens) if w)
    states = fallback_states(folder, options.caption_extension, text)
    if not states:
        return False
    if not text:
        report.notes.append(f"{len(states)} image(s) have no caption and will train with an empty one: pass "
                            "--trigger/--class-tokens, or install a tagger (`loraprep models pull wd-swinv2-tagger-v3`)")
        return True
    written = write_fallback(folder, states)
    blanks = sum(1 for state in written.written if state.before is not None)
    if written.written:
        report.notes.append(f"{len(written.written)} image(s) had no caption and got '{text}' (no tagger ran for them)"
                            + (f"; {blanks} of them had a blank caption file, replaced through the journal: "
                               f"`loraprep captions undo {folder}` restores those" if blanks else ""))
    if written.conflicts:
        report.notes.append(f"{len(written.conflicts)} caption(s) were written by someone else while prep ran and "
                            f"are left as they are: {shown(written.conflicts)}")
    return any(_blank(read_current(folder, caption)) for caption in written.conflicts)


def _check_options(options: PrepOptions) -> None:
    """Every option of every step checked before anything is created (a bad --aspect must not leave
    an empty dataset folder behind)."""
    if options.crop is not None:
        options.crop.check()
    if options.clean is not None:
        options.clean.check()
    options.buckets.buckets  # validates the bucket settings  # noqa: B018
    ManifestOptions(repeats=options.repeats).validate()


def upscaled_count(manifest: Manifest) -> int:
    """Images smaller than their bucket on either side: the trainer enlarges them (softer detail)."""
    return sum(1 for r in manifest.images if r.bucket is not None and (r.width < r.bucket[0] or r.height < r.bucket[1]))


def run_pipeline(src: str | os.PathLike[str], out: str | os.PathLike[str], options: PrepOptions,
                 reporter: Reporter = SILENT) -> PrepReport:
    src, out = Path(src), Path(out)
    _check_folders(src, out)
    _check_options(options)
    if not has_images(src):
        raise NoImages.in_folder(src, "no dataset was made (nothing written)")
    out.mkdir(parents=True, exist_ok=True)
    report = PrepReport(out=out)
    if note := sweep_leftovers(out):
        report.notes.append(note)

    if options.crop is not None:
        from prep.crop import crop_folder

        result = crop_folder(src, out, options.crop, reporter)
        report.steps.append(StepReport("crop", "ran", f"{len(result.done)} crops"))
    else:
        result = normalise_folder(src, out, NormaliseOptions(caption_extension=options.caption_extension,
                                                             overwrite_captions=options.overwrite_captions), reporter)
        report.steps.append(StepReport("copy", "ran", f"{len(result.done)} images copied (crop off)"))
    report.dropped.extend(result.dropped)
    if not has_images(out):
        report.steps.append(StepReport("manifest", "skipped", "no usable images: nothing to clean, tag or freeze "
                                       "(no manifest written); the skipped files say why"))
        return report

    if options.clean is not None:
        from prep.background import clean_folder

        result = clean_folder(out, options.clean, reporter)
        report.steps.append(StepReport("clean", "ran", f"{len(result.done)} images cleaned"))
        report.dropped.extend(result.dropped)
    else:
        report.steps.append(StepReport("clean", "off", "--no-clean"))

    if options.tag is not None:
        from prep.tag import tag_folder

        try:
            tagged = tag_folder(out, options.tag, reporter)
        except (ModelNotAvailable, ModelMismatch) as exc:
            report.steps.append(StepReport("tag", "skipped", exc.message, exc.hint))
        else:
            report.steps.append(StepReport("tag", "ran", f"{len(tagged.done)} images tagged"))
            report.dropped.extend(tagged.dropped)
    else:
        report.steps.append(StepReport("tag", "off", "--no-tag"))

    allow_empty = _fallback_captions(out, options, report)

    plan = options.buckets
    assign_buckets(out, plan, caption_extension=options.caption_extension)

    manifest_path = default_manifest_path(out)
    build = build_manifest(out, ManifestOptions(
        caption_extension=options.caption_extension, trigger=options.trigger, class_tokens=options.class_tokens,
        repeats=options.repeats, allow_empty_captions=allow_empty), manifest_path=manifest_path, reporter=reporter)
    upscaled = upscaled_count(build.manifest)
    upscaling = (f"{upscaled} of {len(build.manifest.images)} images smaller than their bucket (upscaled in training)"
                 if upscaled else "no image needs upscaling")
    report.steps.append(StepReport("bucket", "ran", f"{plan.resolution[0]}×{plan.resolution[1]}, step {plan.step}; "
                                                    f"{upscaling}"))
    write_manifest(build, manifest_path)
    report.notes.extend(build.notes)
    report.dropped.extend(d for d in build.dropped if d not in report.dropped)
    report.steps.append(StepReport("manifest", "ran", f"{len(build.manifest.images)} images → {manifest_path}"))
    report.manifest_path, report.manifest = manifest_path, build.manifest
    from prep.doctor import DoctorOptions, diagnose

    report.doctor = diagnose(out, DoctorOptions(caption_extension=options.caption_extension, buckets=plan), reporter)
    return report
