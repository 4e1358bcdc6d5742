"""Background cleanup: flatten transparency (always) and optionally replace the background.

Trainers ignore alpha, so transparent pixels must become a solid colour or the model learns
whatever junk sits under them. Replacing a busy background (`--background`) needs a subject mask
(prep.masks: the image's own alpha, a flat border flood-filled, a registry model, or GrabCut
seeded from every face). A mask that fails, or is not believable (it would remove a detected
face, or keep almost nothing or almost everything), leaves that image's background as it was
and says so: an unchanged background costs a little quality, a whitened face costs the image.
Written to `--out`, each image's caption follows its input's only while the output's caption still
holds what clean wrote there (prep.carrycaption): an edit made in the output is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from prep.atomic import write_bytes_atomic
from prep.carrycaption import SECTION as CAPTION_RECORD
from prep.carrycaption import Carry, carry_caption, plan_carry, settle_edited
from prep.errors import LoraprepError, UsageError
from prep.faces import FaceDetector, detect_faces
from prep.images import (DEFAULT_MAX_PIXELS, WHITE, flatten_alpha, open_image, save_image_atomic, sha256_file,
                         sha256_text)
from prep.masks import SEGMENTER_NAMES, MaskChooser, Segmenter, mask_problem, segmenter_from_name
from prep.naming import Renamed, check_output_name, output_stems, with_own_sidecars
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Box, Drop
from prep.runner import StepResult, run_step
from prep.sidecars import caption_path, read_caption, read_meta, update_meta
from prep.subjectmask import SECTION as SUBJECT_MASK
from prep.subjectmask import carry_mask, write_mask
from prep.walk import check_separate

Background = Literal["remove", "white", "colour", "blur"]
BACKGROUNDS = ("remove", "white", "colour", "blur")
BACKUP_DIR = ".loraprep/backup"  # inside the cleaned folder; scans skip `.loraprep`
ALPHA_SUFFIXES = frozenset({".png", ".webp"})
KEPT = "background left as it was: "  # how a report line about an untouched background starts
STEP = "clean"


class CleanInterrupted(LoraprepError):
    """Ctrl-C during an in-place clean: says what was rewritten already and how to finish."""

    exit_code = 130


class CleanFailed(LoraprepError):
    """One image could not be cleaned for a reason outside the mask (it is left as it was)."""


# ---- compositing (pure)

def composite(image: np.ndarray, matte: np.ndarray, background: Background, colour: tuple[int, int, int],
              blur_radius: float = 24.0) -> Image.Image:
    """The subject (matte 1) over the chosen background; `remove` keeps the matte as alpha."""
    rgb = Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
    alpha = Image.fromarray(np.round(np.clip(matte, 0, 1) * 255).astype(np.uint8), "L")
    if background == "remove":
        result = rgb.convert("RGBA")
        result.putalpha(alpha)
        return result
    if background == "blur":
        base = rgb.filter(ImageFilter.GaussianBlur(blur_radius))
    else:
        base = Image.new("RGB", rgb.size, WHITE if background == "white" else colour)
    base.paste(rgb, mask=alpha)
    return base


def own_alpha(image: Image.Image) -> np.ndarray | None:
    """The image's alpha as a matte, or None when it has none (or it is fully opaque)."""
    if "A" not in image.getbands():
        return None
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() == 255:
        return None
    return alpha.astype(np.float32) / 255.0


# ---- folder step

@dataclass(frozen=True)
class CleanOptions:
    """How `clean_folder` cleans.

    colour: what transparent pixels (and `--background colour`) become.
    background: None = flatten alpha only; remove (keep a transparent PNG), white, colour, blur.
    in_place: overwrite the images, keeping each original once under `<folder>/.loraprep/backup/`
      (`backup=False` skips that, for folders that are themselves derived, e.g. `loraprep prep`'s crops).
    masks: also write each subject mask as a greyscale PNG into `mask_dir` (default `<out>-masks`).
    dry_run: change nothing; write a before/after contact sheet to `sheet` instead.
    overwrite_captions: with `out`, also replace output captions edited since clean wrote them with
      the input's caption (journalled); by default they are kept and named.
    """

    colour: tuple[int, int, int] = WHITE
    background: Background | None = None
    segmenter: str = "auto"
    in_place: bool = False
    backup: bool = True
    masks: bool = False
    mask_dir: Path | None = None
    dry_run: bool = False
    sheet: Path | None = None
    blur_radius: float = 24.0
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    overwrite_captions: bool = False

    def check(self) -> CleanOptions:
        if self.background is not None and self.background not in BACKGROUNDS:
            raise UsageError(f"unknown --background '{self.background}'", hint=f"choose one of: {', '.join(BACKGROUNDS)}")
        if self.segmenter not in SEGMENTER_NAMES:
            raise UsageError(f"unknown segmenter '{self.segmenter}'", hint=f"choose one of: {', '.join(SEGMENTER_NAMES)}")
        if not all(0 <= c <= 255 for c in self.colour) or len(self.colour) != 3:
            raise UsageError(f"colour {self.colour} is not an RGB triple of 0-255 values")
        if self.overwrite_captions and self.in_place:
            raise UsageError("--overwrite-captions applies to --out: --in-place never rewrites a caption",
                             hint="drop --overwrite-captions, or clean into an --out folder")
        return self

    @property
    def key(self) -> str:
        """Fingerprint of what shapes a cleaned image: an in-place re-run skips images whose
        `clean` metadata carries this key and whose bytes are still the ones it wrote."""
        return sha256_text(repr((self.background, self.colour, self.segmenter, self.blur_radius)))[:16]


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#ffffff', 'ffffff', '255,255,255' or a colour name ('white') → (r, g, b)."""
    from PIL import ImageColor

    value = text.strip()
    if value.count(",") == 2:
        try:
            parts = tuple(int(p) for p in value.split(","))
        except ValueError:
            parts = ()
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return parts  # type: ignore[return-value]
    elif len(value) in (3, 6) and all(c in "0123456789abcdefABCDEF" for c in value):
        value = "#" + value
    try:
        return ImageColor.getrgb(value)[:3]  # type: ignore[return-value]
    except ValueError:
        raise UsageError(f"'{text}' is not a colour", hint="use #rrggbb, r,g,b or a name such as white") from None


@dataclass(frozen=True)
class CleanResult:
    source: Path
    target: Path | None  # None: nothing to change (in place), already done, or a dry run
    before: Image.Image | None = None
    after: Image.Image | None = None
    kept: str | None = None  # why the background was left as it was
    edited_caption: Carry | None = None  # the output's caption, edited since clean wrote it: kept


@dataclass
class CleanRun(StepResult[Path]):
    """A clean run's written images (`done`) and the images it left out. With `--out`,
    `captions_kept`: output captions edited since clean wrote them, left as they are;
    `captions_replaced`: those --overwrite-captions replaced (journalled)."""

    captions_kept: list[Path] = field(default_factory=list)
    captions_replaced: list[Path] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # --out: sources sharing a stem, written apart


@dataclass(frozen=True)
class _Job:
    path: Path
    rel: Path
    stem: str = ""  # what its outputs are named from (prep.naming: unique in its folder)
    shared: bool = False  # its caption and metadata files are another source's too: not carried

    def output(self, base: Path, suffix: str | None = None) -> Path:
        """The job's image under `base` (same sub-folder), named from its stem."""
        return base / self.rel.parent / ((self.stem or self.rel.stem) + (suffix or self.rel.suffix))


@dataclass(frozen=True)
class Cleaned:
    """One cleaned image: the pixels, the mask used (None when only flattened), where the mask came
    from, and, when the background was left alone, why."""

    image: Image.Image
    matte: np.ndarray | None
    origin: str
    kept: str | None = None


def subject_mask(rgb: np.ndarray, chooser: MaskChooser, detector: FaceDetector | None
                 ) -> tuple[np.ndarray, str, None] | tuple[None, str, str]:
    """(mask, its origin, None), or (None, "none", why there is no believable mask). Any failure
    inside detection or segmentation costs this image's background only, never the batch."""
    try:
        faces: list[Box] = [f.box for f in detect_faces(rgb, detector)[0]] if detector is not None else []
        found = chooser(rgb, faces)
    except Exception as exc:  # cv2.error, onnxruntime's errors...: named, never a traceback
        detail = (str(exc).strip().splitlines() or [""])[-1][:160]
        return None, "none", f"the {chooser.name} mask failed ({type(exc).__name__}: {detail})"
    if found is None:
        return None, "none", f"no {chooser.name} mask fits this image"
    matte, origin = found
    problem = mask_problem(matte, faces)
    if problem is not None:
        return None, "none", f"{problem} ({origin})"
    return matte, origin, None


def clean_image(image: Image.Image, options: CleanOptions, chooser: MaskChooser | None,
                detector: FaceDetector | None = None) -> Cleaned:
    """The cleaned image. The image's own alpha is its mask; otherwise `chooser` finds one, and a
    mask that fails or is not believable leaves the background as it was (alpha still flattened)."""
    matte = own_alpha(image)
    if options.background is None:
        return Cleaned(flatten_alpha(image, options.colour), matte, "alpha" if matte is not None else "none")
    rgb = np.asarray(flatten_alpha(image, options.colour).convert("RGB"))
    origin, kept = "alpha", None
    if matte is None:
        if chooser is None:
            raise UsageError("a background mode needs a segmenter")
        matte, origin, kept = subject_mask(rgb, chooser, detector)
    if matte is None:
        return Cleaned(flatten_alpha(image, options.colour), None, origin, kept)
    return Cleaned(composite(rgb, matte, options.background, options.colour, options.blur_radius), matte, origin)


def _target(job: _Job, folder: Path, out: Path | None, has_alpha: bool) -> Path:
    target = folder / job.rel if out is None else job.output(out)
    if has_alpha and target.suffix.lower() not in ALPHA_SUFFIXES:
        target = target.with_suffix(".png")
    return target


def _already_clean(path: Path, options: CleanOptions) -> bool:
    """In place: this image was cleaned with these settings and not changed since."""
    info = read_meta(path).get("clean") or {}
    return info.get("key") == options.key and info.get("sha256") == sha256_file(path)


def _clean_one(job: _Job, folder: Path, out: Path | None, options: CleanOptions, chooser: MaskChooser | None,
               detector: FaceDetector | None, mask_dir: Path | None, rewritten: list[Path]) -> CleanResult:
    if out is None and not options.dry_run and options.background is not None and _already_clean(job.path, options):
        return CleanResult(job.path, None)
    image = open_image(job.path, max_pixels=options.max_pixels)
    try:
        cleaned = clean_image(image, options, chooser, detector)
    except LoraprepError:
        raise
    except Exception as exc:  # one image's trouble is reported with its name, the batch goes on
        raise CleanFailed(f"could not clean {job.path}: {type(exc).__name__}: {exc}") from exc
    if options.dry_run:
        return CleanResult(job.path, None, _small(image), _small(cleaned.image), cleaned.kept)
    result = cleaned.image
    changed = result is not image
    if out is None and not changed:
        return CleanResult(job.path, None, kept=cleaned.kept)
    target = _target(job, folder, out, "A" in result.getbands())
    check_output_name(target, options.caption_extension)
    info: dict[str, object] = {"alpha_flattened": "A" in image.getbands(), "background": options.background,
                               "colour": list(options.colour), "mask": cleaned.origin, "key": options.key}
    if cleaned.kept:
        info["background_kept"] = cleaned.kept
    if out is None and options.backup:
        backup = folder / BACKUP_DIR / job.rel
        if not backup.exists():
            write_bytes_atomic(backup, job.path.read_bytes())
        info["backup"] = (Path(BACKUP_DIR) / job.rel).as_posix()
    if changed:
        save_image_atomic(result, target)
    else:
        write_bytes_atomic(target, job.path.read_bytes())
    if out is None:
        rewritten.append(job.path)
    edited = None
    if target != job.path:
        edited = None if job.shared else _carry_sidecars(job.path, target, out, options.caption_extension)
        if out is None:
            job.path.unlink()
    if mask_dir is not None and cleaned.matte is not None:
        mask = Image.fromarray(np.round(cleaned.matte * 255).astype(np.uint8), "L")
        save_image_atomic(mask, job.output(mask_dir, ".png"))
    info["sha256"] = sha256_file(target)
    kept_mask = _keep_mask(job.path, target, cleaned)
    update_meta(target, clean=info, **({SUBJECT_MASK: kept_mask} if kept_mask is not None or target != job.path else {}))
    return CleanResult(job.path, target, kept=cleaned.kept, edited_caption=edited)


def _keep_mask(source: Path, target: Path, cleaned: Cleaned) -> dict | None:
    """The subject mask as `NAME.mask.png` beside the cleaned image (what `train --masked-loss`
    reads): the one computed now, else a mask the source already had, carried along."""
    if cleaned.matte is not None:
        return write_mask(target, cleaned.matte, cleaned.origin)
    if target != source:
        return carry_mask(source, target, read_meta(source).get(SUBJECT_MASK))
    return None


def _carry_sidecars(source: Path, target: Path, out: Path | None, extension: str) -> Carry | None:
    """Metadata and caption travel with the image. The input's `caption_written` record stays
    behind: it vouches for the input's caption file, and carried over it would make an edit in the
    output that matches it look like clean's own text. The caption follows the input's only where
    that loses nothing (prep.carrycaption); returns the output caption edited since, left alone."""
    meta = {name: section for name, section in read_meta(source).items() if name != CAPTION_RECORD}
    if meta:
        update_meta(target, **meta)
    caption = read_caption(caption_path(source, extension))
    if out is None or caption is None or caption_path(source, extension) == caption_path(target, extension):
        return None
    return carry_caption(out, plan_carry(out, target, caption, extension, STEP), STEP)


def _small(image: Image.Image, size: int = 384) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size))
    return copy


def _jobs(folder: Path, problems: list[Drop], *, in_place: bool, extension: str) -> tuple[list[_Job], list[Renamed]]:
    """One job per image. Written elsewhere, sources of one folder sharing a stem (`a.png`,
    `a.jpg`) are named apart (prep.naming); in place, where names cannot change, they are left out
    with the reason: one's clean record would overwrite the other's in their shared metadata file,
    and flattening a transparent `a.gif` to `a.png` would write over the other image."""
    from prep.scan import walk_images

    paths = list(walk_images(folder, problems))
    if not in_place:
        rels = [p.relative_to(folder) for p in paths]
        stems, renamed = output_stems(rels)
        shared = {source for group in renamed for source in group.sources}
        return [_Job(p, rel, stems[rel], rel in shared) for p, rel in zip(paths, rels)], renamed
    kept = with_own_sidecars(folder, paths, extension, "clean", problems, prefix="not cleaned in place: ")
    return [_Job(p, p.relative_to(folder)) for p in kept], []


def clean_folder(folder: Path, options: CleanOptions = CleanOptions(), reporter: Reporter = SILENT,
                 out: Path | None = None, *, segmenter: MaskChooser | Segmenter | None = None,
                 detector: FaceDetector | None = None) -> CleanRun:
    """Clean every image under `folder`: flatten alpha, and replace the background when asked.

    Writes to `out` (same sub-folders, captions and metadata carried; on a re-run an output caption
    edited since clean wrote it is kept and named, see `CleanOptions.overwrite_captions`), or with
    `in_place` over the originals, each kept once under `<folder>/.loraprep/backup/`. With neither,
    `out` defaults to the sibling folder `<folder>-clean`. Each written image's metadata gets a `clean` section.
    An image whose background could not be replaced believably keeps it and is reported in
    `dropped` with the reason (its alpha is still flattened). In place, a re-run skips images
    already cleaned with the same settings, so an interrupted batch is finished by running it again.
    `segmenter` and `detector` replace the ones `options` names (tests pass real detectors built
    on explicit model files).
    A dry run writes only a before/after contact sheet; `done` then holds the sheet's path.
    """
    folder = Path(folder)
    options = options.check()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    if options.in_place and out is not None:
        raise UsageError("--in-place and --out exclude each other")
    if out is not None:
        check_separate(folder, out, what="the folder")
    if not options.in_place and out is None:
        out = folder.with_name(folder.name + "-clean")
        if not options.dry_run:
            reporter.note(f"writing cleaned images to {out} (use --in-place to overwrite, with a backup)")
    if segmenter is not None and not isinstance(segmenter, MaskChooser):
        segmenter = MaskChooser((segmenter,))
    if options.background is not None:
        if detector is None:
            from prep.faces import detector_from_name

            detector = detector_from_name("auto", reporter)
        if segmenter is None:
            segmenter = segmenter_from_name(options.segmenter, reporter)
    mask_dir = None
    if options.masks and not options.dry_run:
        mask_dir = options.mask_dir or (out or folder).with_name((out or folder).name + "-masks")
        check_separate(folder, mask_dir, option="--mask-dir", what="the folder")
    problems: list[Drop] = []
    jobs, renamed = _jobs(folder, problems, in_place=options.in_place and not options.dry_run,
                          extension=options.caption_extension)
    for group in renamed:
        reporter.note(group.message("cleaned images"))
    rewritten: list[Path] = []
    target = None if options.in_place else out
    try:
        cleaned = run_step(jobs, lambda job: _clean_one(job, folder, target, options, segmenter, detector, mask_dir,
                                                        rewritten),
                           step="clean", name=lambda job: str(job.path), reporter=reporter, label="cleaning",
                           workers=options.workers)
    except KeyboardInterrupt:
        if not options.in_place or options.dry_run:
            raise
        raise CleanInterrupted(
            f"interrupted: {len(rewritten)} of {len(jobs)} images in {folder} were rewritten in place before the stop"
            + (f" (their originals are kept under {folder / BACKUP_DIR})" if options.backup else "")
            + "; the others are untouched",
            hint="run the same command again to finish: images already cleaned with these settings are skipped",
        ) from None
    kept = [Drop(str(r.source), "clean", KEPT + r.kept) for r in cleaned.done if r.kept]
    dropped = problems + cleaned.dropped + kept
    if options.dry_run:
        sheet = options.sheet or folder.with_name(folder.name + "-clean-preview.png")
        _write_preview(cleaned.done, folder, sheet)
        return CleanRun(done=[sheet], dropped=dropped)
    result = CleanRun(done=[r.target for r in cleaned.done if r.target is not None], dropped=dropped,
                      renamed=renamed)
    if target is not None:
        edited = [r.edited_caption for r in cleaned.done if r.edited_caption is not None]
        settled = settle_edited(target, edited, STEP, overwrite=options.overwrite_captions, reporter=reporter)
        result.captions_kept.extend(target / name for name in settled.kept)
        result.captions_replaced.extend(target / name for name in settled.replaced)
    return result


def _write_preview(results: Sequence[CleanResult], folder: Path, sheet: Path) -> None:
    from prep.sheet import SheetCell, render_sheet

    cells = []
    for result in results:
        name = result.source.relative_to(folder).as_posix()
        cells.append(SheetCell(result.before, (), (name, "before")))  # type: ignore[arg-type]
        cells.append(SheetCell(result.after, (), (name, "after")))  # type: ignore[arg-type]
    if not cells:
        raise UsageError(f"no readable images under {folder}")
    save_image_atomic(render_sheet(cells, columns=6, thumb=256), sheet)
