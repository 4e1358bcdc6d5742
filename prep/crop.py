"""Face-aware crops: face box → crop box per preset → pixels cut from the full-resolution image.

The arithmetic (preset regions, aspect fitting, keeping other faces whole) is pure functions over
boxes; `crop_folder` walks a folder, detects faces on a reduced copy of each image, cuts every
crop from the full-resolution decode and writes it with its caption and metadata sidecar. Upright
RGB/greyscale JPEGs skip the full decode: detection runs on a scaled decode and crops are cut
losslessly in the DCT domain (prep.jpegcrop). The source folder is only ever read.

Boxes are (x0, y0, x1, y1) in pixels, x1/y1 exclusive, in the image as displayed (after EXIF
orientation). A padded crop's box reaches outside the source image; that is how padding shows.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from prep.atomic import write_bytes_atomic
from prep.buckets import BucketPlan, bucket_for
from prep.carrycaption import Carry, carry_caption, plan_carry, settle_edited
from prep.errors import LoraprepError, UsageError
from prep.faces import DETECT_SIZE, DETECTOR_NAMES, FaceDetector, detect_faces, detector_from_name
from prep.focal import content_box, figure_box, focal_point
from prep.images import DEFAULT_MAX_PIXELS, WHITE, is_image_path, open_image, save_image_atomic, sha256_file
from prep.jpegcrop import ENABLE_HINT, LosslessJpeg, load_turbojpeg, open_lossless
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Drop, Face, Source, relative_to_base
from prep.runner import StepResult, run_step
from prep.naming import Renamed, check_output_name, output_stems
from prep.scan import NoImages
from prep.walk import check_separate
from prep.sidecars import caption_path, read_caption, read_meta, update_meta
from prep.subjectmask import SECTION as SUBJECT_MASK
from prep.subjectmask import cut_mask

Box = tuple[int, int, int, int]
FBox = tuple[float, float, float, float]
Fit = Literal["widen", "pad"]
PRESETS = ("face", "upper-body", "full")
ASPECTS = ("1:1", "2:3", "3:2", "bucket")
# Margins around the face box as (left, top, right, bottom) multiples of its width/height: the
# face preset keeps the hair (more room above than below), upper-body reaches to about the waist.
PRESET_MARGINS: dict[str, FBox] = {
    "face": (0.45, 0.6, 0.45, 0.35),
    "upper-body": (1.4, 0.8, 1.4, 3.2),
}
KEEP_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
STEP = "crop"


class CropSkipped(LoraprepError):
    """An image the crop options leave out on purpose (too many faces, too small)."""


@dataclass(frozen=True)
class CropOptions:
    """How `crop_folder` crops. Validated once by `check()`.

    presets: any of face / upper-body / full, each giving its own crop.
    aspect: "W:H" (1:1, 2:3, 3:2 ...) or "bucket" (the nearest bucket shape at `bucket_resolution`).
    fit: when the aspect cannot hold the face and its margin inside the image, "widen" keeps the
      crop inside the image and loosens the aspect; "pad" keeps the aspect and pads with `colour`.
    min_size: crops whose shorter side is below it are skipped (`small="skip"`) or written and
      flagged `upscale: true` in their metadata (`small="flag"`).
    max_faces / skip_multi / one_per_face: group shots. Without one_per_face the largest face is
      the subject (and no other face is cut through).
    detect_size: longest side of the reduced copy detection runs on.
    lossless_jpeg: cut crops of upright RGB/greyscale JPEGs losslessly (prep.jpegcrop) when
      libjpeg-turbo is available: no full decode, no re-encode, the box moved onto the 8/16 px
      iMCU grid (grown up/left, or shifted at its size). False always takes the decode path.
    overwrite_captions: a crop caption edited since crop wrote it is kept (and named) unless this
      is set; then it gets its source's caption again, through the caption journal (undoable).
    """

    presets: tuple[str, ...] = ("face",)
    detector: str = "auto"
    aspect: str = "1:1"
    fit: Fit = "widen"
    min_size: int = 512
    small: Literal["flag", "skip"] = "flag"
    max_faces: int | None = None
    skip_multi: bool = False
    one_per_face: bool = False
    colour: tuple[int, int, int] = WHITE
    bucket_resolution: int = 512
    detect_size: int = DETECT_SIZE
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    lossless_jpeg: bool = True
    force: bool = False  # re-crop sources whose crops are already there with these settings
    overwrite_captions: bool = False  # replace crop captions edited since crop wrote them (journalled)

    def check(self) -> CropOptions:
        if not self.presets:
            raise UsageError("no crop preset given", hint=f"choose from {', '.join(PRESETS)}")
        for preset in self.presets:
            if preset not in PRESETS:
                raise UsageError(f"unknown crop preset '{preset}'", hint=f"choose from {', '.join(PRESETS)}")
        parse_aspect(self.aspect)
        if self.detector not in DETECTOR_NAMES:
            raise UsageError(f"unknown face detector '{self.detector}'", hint=f"choose from {', '.join(DETECTOR_NAMES)}")
        if self.fit not in ("widen", "pad"):
            raise UsageError(f"--fit must be widen or pad, not '{self.fit}'")
        if self.small not in ("flag", "skip"):
            raise UsageError(f"small crops are 'flag'ged or 'skip'ped, not '{self.small}'")
        if self.max_faces is not None and self.max_faces < 1:
            raise UsageError("--max-faces must be at least 1")
        if self.min_size < 0 or self.detect_size < 64:
            raise UsageError("--min-size must be ≥ 0 and the detection size ≥ 64")
        return self

    @property
    def face_limit(self) -> int | None:
        return 1 if self.skip_multi else self.max_faces

    def key(self, detector: str) -> str:
        """Fingerprint of everything that shapes a crop: equal keys and source hashes, equal crops."""
        from prep.images import sha256_text

        fields = (self.presets, detector, self.aspect, self.fit, self.min_size, self.small, self.max_faces,
                  self.skip_multi, self.one_per_face, self.colour, self.bucket_resolution, self.detect_size,
                  self.lossless_jpeg)
        return sha256_text(repr(fields))[:16]


# ---- pure geometry

def parse_aspect(aspect: str) -> float | None:
    """"2:3" → 0.666…; "bucket" → None (decided per crop)."""
    if aspect == "bucket":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*", aspect)
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise UsageError(f"aspect '{aspect}' is not W:H or 'bucket'", hint="e.g. --aspect 1:1, 2:3, 3:2 or bucket")
    return float(match.group(1)) / float(match.group(2))


def clip_to(box: FBox, size: tuple[int, int]) -> FBox:
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(size[0]), box[2]), min(float(size[1]), box[3]))


def union(a: FBox, b: FBox) -> FBox:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def contains(outer: Sequence[float], inner: Sequence[float]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def preset_region(face: Box, preset: str) -> FBox:
    """The face box grown by the preset's margins (may reach outside the image)."""
    left, top, right, bottom = PRESET_MARGINS[preset]
    width, height = face[2] - face[0], face[3] - face[1]
    return (face[0] - left * width, face[1] - top * height, face[2] + right * width, face[3] + bottom * height)


def _place(centre: float, length: float, limit: float) -> tuple[float, float]:
    """A span of `length` centred on `centre`, shifted to lie inside [0, limit] when it fits."""
    start = centre - length / 2
    if length <= limit:
        start = min(max(0.0, start), limit - length)
    else:
        start = (limit - length) / 2
    return start, start + length


def fit_aspect(region: FBox, ratio: float, size: tuple[int, int], fit: Fit) -> tuple[Box, str]:
    """The smallest box of aspect `ratio` (w/h) holding `region` (clipped to the image), placed
    inside the image. When it cannot fit, "widen" clips it to the image (the aspect gives way) and
    "pad" keeps the aspect and lets the box reach outside (padding). Returns the box and
    "exact", "widened" or "padded"."""
    width, height = size
    x0, y0, x1, y1 = clip_to(region, size)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    if w / h < ratio:
        w = h * ratio
    else:
        h = w / ratio
    how = "exact"
    if w > width + 0.5 or h > height + 0.5:
        if fit == "widen":
            w, h, how = min(w, width), min(h, height), "widened"
        else:
            how = "padded"
    bx0, bx1 = _place((x0 + x1) / 2, w, width)
    by0, by1 = _place((y0 + y1) / 2, h, height)
    box = (math.floor(bx0 + 1e-6), math.floor(by0 + 1e-6), math.ceil(bx1 - 1e-6), math.ceil(by1 - 1e-6))
    if how != "padded":
        box = (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))
    # integer rounding must never cut the region itself
    box = (min(box[0], math.floor(x0)), min(box[1], math.floor(y0)),
           max(box[2], math.ceil(x1)), max(box[3], math.ceil(y1)))
    return box, how


def keep_faces_whole(box: Box, region: FBox, faces: Sequence[Box], ratio: float, size: tuple[int, int],
                     fit: Fit) -> tuple[Box, str]:
    """Grow the crop until no face is cut: every face ends up wholly inside or wholly outside."""
    box, how = fit_aspect(region, ratio, size, fit)
    for _ in range(len(faces) + 1):
        cut = [f for f in faces if overlaps(box, f) and not contains(box, f)]
        if not cut:
            break
        for face in cut:
            region = union(region, tuple(float(v) for v in face))  # type: ignore[arg-type]
        box, how = fit_aspect(region, ratio, size, fit)
    return box, how


def largest_box_at(point: tuple[float, float], ratio: float, size: tuple[int, int]) -> Box:
    """The largest box of aspect `ratio` inside the image, as centred on `point` as it can be."""
    width, height = size
    w = min(float(width), height * ratio)
    h = w / ratio
    x0, x1 = _place(point[0], w, width)
    y0, y1 = _place(point[1], h, height)
    return (max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1)))


def top_of(figure: FBox, ratio: float, size: tuple[int, int], headroom: float = 0.04) -> Box:
    """The largest box of aspect `ratio` inside the image, centred on the figure across and
    starting just above its top (a little headroom), so a standing figure keeps its head."""
    width, height = size
    h = min(float(width), height * ratio) / ratio
    top = max(0.0, figure[1] - headroom * h)
    return largest_box_at(((figure[0] + figure[2]) / 2, top + h / 2), ratio, size)


def bucket_ratio(region: FBox, resolution: int) -> float:
    """Aspect of the bucket nearest the region's own shape (`--aspect bucket`)."""
    plan = BucketPlan(resolution=(resolution, resolution), max_size=max(1024, resolution * 2))
    w, h = max(region[2] - region[0], 1.0), max(region[3] - region[1], 1.0)
    bucket = bucket_for((round(w), round(h)), plan.buckets)
    return bucket[0] / bucket[1]


def faces_in_crop(faces: Sequence[Face], box: Box) -> list[Face]:
    """Faces wholly inside `box`, moved into the crop's pixel coordinates."""
    return [Face((f.box[0] - box[0], f.box[1] - box[1], f.box[2] - box[0], f.box[3] - box[1]), f.score, f.detector)
            for f in faces if contains(box, f.box)]


def cut(image: Image.Image, box: Box, colour: tuple[int, int, int]) -> Image.Image:
    """Pixels of `box`; parts outside the image are filled with `colour` (transparent for RGBA)."""
    if box[0] >= 0 and box[1] >= 0 and box[2] <= image.width and box[3] <= image.height:
        return image.crop(box)
    fill = (*colour, 0) if image.mode == "RGBA" else colour
    canvas = Image.new(image.mode, (box[2] - box[0], box[3] - box[1]), fill)
    inside = clip_to(box, image.size)
    part = image.crop(tuple(int(v) for v in inside))
    canvas.paste(part, (int(inside[0]) - box[0], int(inside[1]) - box[1]))
    return canvas


# ---- one image

@dataclass(frozen=True)
class CropPlan:
    """One crop to cut: its file label, preset, box in source pixels and how the aspect was met."""

    label: str
    preset: str
    box: Box
    fit: str
    subject: int | None  # index of the face it was built around; None for focal / full crops

    @property
    def short_side(self) -> int:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def plan_crops(size: tuple[int, int], faces: Sequence[Face], detection: np.ndarray, scale: float,
               options: CropOptions) -> list[CropPlan]:
    """Every crop for one image. `detection` is the reduced copy (scale = full / reduced)."""
    ratio = parse_aspect(options.aspect)
    boxes = [f.box for f in faces]
    plans: list[CropPlan] = []

    def ratio_for(region: FBox) -> float:
        return ratio if ratio is not None else bucket_ratio(region, options.bucket_resolution)

    if "full" in options.presets:
        c = content_box(detection)
        region = (c[0] * scale, c[1] * scale, c[2] * scale, c[3] * scale)
        for face in boxes:
            region = union(region, tuple(float(v) for v in face))  # type: ignore[arg-type]
        region = clip_to(region, size)
        box, how = keep_faces_whole((0, 0, 0, 0), region, boxes, ratio_for(region), size, options.fit)
        plans.append(CropPlan("full", "full", box, how, None))
    face_presets = [p for p in options.presets if p != "full"]
    if not face_presets:
        return plans
    if not faces:
        whole = (0.0, 0.0, float(size[0]), float(size[1]))
        figure = figure_box(detection)
        if figure is not None:  # a cut-out figure: its head is at the top, whatever the detail says
            top = (figure[0] * scale, figure[1] * scale, figure[2] * scale, figure[3] * scale)
            box = top_of(top, ratio_for(whole), size)
        else:
            point = focal_point(detection)
            box = largest_box_at((point[0] * scale, point[1] * scale), ratio_for(whole), size)
        plans.append(CropPlan("focal", "focal", box, "exact", None))
        return plans
    subjects = range(len(faces)) if options.one_per_face else [max(range(len(faces)), key=lambda i: _area(boxes[i]))]
    for index in subjects:
        for preset in face_presets:
            region = preset_region(boxes[index], preset)
            box, how = keep_faces_whole((0, 0, 0, 0), region, boxes, ratio_for(clip_to(region, size)), size, options.fit)
            label = f"{preset}{index + 1}" if options.one_per_face else preset
            plans.append(CropPlan(label, preset, box, how, index))
    return plans


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


@dataclass(frozen=True)
class CropOutcome:
    source: Path
    written: tuple[Path, ...]
    skipped: tuple[str, ...]  # reasons for crops left out (too small)
    superseded: tuple[Path, ...] = ()  # earlier crops of this source path, cut before its content changed
    reused: bool = False  # `written` were already there with these settings; nothing was cut
    edited_captions: tuple[Carry, ...] = ()  # crop captions edited since crop wrote them: kept


@dataclass(frozen=True)
class _Job:
    path: Path
    rel: Path
    stem: str = ""  # what its crops are named from (prep.naming: unique in its folder)
    shared: bool = False  # its caption file is another source's too: its crops do not take it

    @property
    def name_stem(self) -> str:
        return self.stem or self.rel.stem


def _output_suffix(source: Path) -> str:
    suffix = source.suffix.lower()
    return suffix if suffix in KEEP_SUFFIXES else ".png"


class EarlierCrops:
    """The output folders' file names as they were when the run started, listed once per folder
    (sorted, so finding one source's crops is a bisection, not a folder walk per image)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._names: dict[Path, list[str]] = {}
        self._lock = threading.Lock()

    def names(self, folder: Path) -> list[str]:
        with self._lock:
            if folder not in self._names:
                self._names[folder] = sorted(os.listdir(folder)) if folder.is_dir() else []
            return self._names[folder]

    def of(self, job: _Job, source_path: str, digest: str, key: str) -> tuple[list[Path], list[Path]]:
        """Crops an earlier run made from this very source with the same settings (a re-run skips
        the source), and crops made from an earlier content of the same source path (superseded).
        `source_path`: the source as crops record it (relative to the output folder)."""
        folder = self.out / job.rel.parent
        names = self.names(folder)
        prefix = f"{job.name_stem}-"
        same: list[Path] = []
        superseded: list[Path] = []
        for name in names[bisect.bisect_left(names, prefix):]:
            if not name.startswith(prefix):
                break
            path = folder / name
            if not is_image_path(path):
                continue
            meta = read_meta(path)
            source = meta.get("source") or {}
            if source.get("sha256") == digest and (meta.get("crop") or {}).get("key") == key:
                same.append(path)
            elif source.get("path") == source_path and source.get("sha256") not in (None, digest):
                superseded.append(path)
        return same, superseded


def crop_image(job: _Job, out: Path, options: CropOptions, detector: FaceDetector, turbo: Any | None,
               earlier: EarlierCrops) -> CropOutcome:
    """Detect, plan and write every crop of one source image (unless `earlier` holds them already)."""
    data = job.path.read_bytes() if turbo is not None and job.path.suffix.lower() in (".jpg", ".jpeg") else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(job.path)
    source_path = relative_to_base(job.path, out)
    key = options.key(detector.name)
    caption = None if job.shared else read_caption(caption_path(job.path, options.caption_extension))
    done, superseded = earlier.of(job, source_path, digest, key)
    if done and not options.force:  # the source caption may have been edited since: carry it again
        edited = _carry_captions(out, done, caption, options.caption_extension)
        return CropOutcome(job.path, tuple(done), (), tuple(superseded), reused=True, edited_captions=edited)
    jpeg = open_lossless(turbo, job.path, options.max_pixels, data) if data is not None else None
    image: Image.Image | None = None
    if jpeg is not None:
        size = jpeg.size
        faces, detection, scale = detect_faces(jpeg.reduced(options.detect_size), detector, options.detect_size, size)
    else:
        image = open_image(job.path, max_pixels=options.max_pixels)
        size = image.size
        faces, detection, scale = detect_faces(image, detector, options.detect_size)
    limit = options.face_limit
    if limit is not None and len(faces) > limit:
        raise CropSkipped(f"{len(faces)} faces found, more than --max-faces {limit}"
                          if not options.skip_multi else f"{len(faces)} faces found and --skip-multi is set")
    plans: list[CropPlan] = []
    skipped: list[str] = []
    for plan in plan_crops(size, faces, detection, scale, options):
        if plan.short_side < options.min_size and options.small == "skip":
            skipped.append(f"{plan.label} crop is {plan.short_side}px on its short side, "
                           f"below --min-size {options.min_size}")
        else:
            plans.append(plan)
    targets = [out / job.rel.parent / f"{job.name_stem}-{plan.label}{_output_suffix(job.path)}" for plan in plans]
    for target in targets:  # every crop of the source can be named, with its sidecars, or none is cut
        check_output_name(target, options.caption_extension)
    cuts = _lossless_cuts(jpeg, plans, faces) if jpeg is not None else [None] * len(plans)
    written: list[Path] = []
    for plan, lossless_cut, target in zip(plans, cuts, targets, strict=True):
        if lossless_cut is not None:
            box, encoded = lossless_cut
            write_bytes_atomic(target, encoded)
        else:
            box = plan.box
            if image is None:
                image = open_image(job.path, max_pixels=options.max_pixels)
            save_image_atomic(cut(image, box, options.colour), target)
        source = Source(source_path, digest, box)
        mask = cut_mask(job.path, box, target)  # the source's subject mask, cut like the image
        update_meta(target, source=source.to_dict(), faces=[f.to_dict() for f in faces_in_crop(faces, box)],
                    **({SUBJECT_MASK: mask} if mask is not None else {}),
                    crop={"preset": plan.preset, "box": list(box), "planned_box": list(plan.box),
                          "lossless": lossless_cut is not None, "detector": detector.name, "aspect": options.aspect,
                          "key": key, "fit": plan.fit, "padded": plan.fit == "padded",
                          "widened": plan.fit == "widened", "upscale": plan.short_side < options.min_size,
                          "subject_face": plan.subject, "source_faces": [list(f.box) for f in faces]})
        written.append(target)
    if not written and skipped:
        raise CropSkipped("; ".join(skipped))
    edited = _carry_captions(out, written, caption, options.caption_extension)
    return CropOutcome(job.path, tuple(written), tuple(skipped), tuple(p for p in superseded if p not in written),
                       edited_captions=edited)


def _carry_captions(out: Path, crops: Sequence[Path], caption: str | None, extension: str) -> tuple[Carry, ...]:
    """Give each crop its source's caption where that loses nothing (prep.carrycaption); returns the
    crop captions edited since crop wrote them, left as they are."""
    if caption is None:
        return ()
    carries = (carry_caption(out, plan_carry(out, crop, caption, extension, STEP), STEP) for crop in crops)
    return tuple(c for c in carries if c is not None)


def _lossless_cuts(jpeg: LosslessJpeg, plans: Sequence[CropPlan],
                   faces: Sequence[Face]) -> list[tuple[Box, bytes] | None]:
    """For each plan, its box moved onto the iMCU grid by `LosslessJpeg.aligned` (aspect kept
    unless the plan already widened it) and the JPEG bytes cut there, all in one transform; None
    for a crop that needs the decode path (padding, or no grid box keeps the faces whole)."""
    boxes = [jpeg.aligned(plan.box, [f.box for f in faces], keep_aspect=plan.fit != "widened") for plan in plans]
    wanted = [box for box in boxes if box is not None]
    encoded = iter(jpeg.crop_many(wanted))
    cuts: list[tuple[Box, bytes] | None] = []
    for box in boxes:
        data = next(encoded) if box is not None else None
        cuts.append((box, data) if box is not None and data is not None else None)
    return cuts


def _jobs(src: Path) -> tuple[list[_Job], list[Drop], list[Renamed]]:
    """One job per source image; sources of one folder that share a stem (`a.png`, `a.jpg`) get
    crops named apart (`a_png-face.png`, `a_jpg-face.jpg`), never one caption for two pictures."""
    from prep.scan import walk_images

    problems: list[Drop] = []
    if src.is_file():
        return [_Job(src, Path(src.name))], problems, []
    paths = list(walk_images(src, problems))
    rels = [p.relative_to(src) for p in paths]
    stems, renamed = output_stems(rels)
    shared = {source for group in renamed for source in group.sources}
    return [_Job(p, rel, stems[rel], rel in shared) for p, rel in zip(paths, rels)], problems, renamed


def crop_folder(src: Path, out: Path, options: CropOptions = CropOptions(), reporter: Reporter = SILENT, *,
                detector: FaceDetector | None = None) -> CropRun:
    """Crop every image under `src` into `out` (same sub-folders), never touching `src`.

    Each crop gets the source's caption sidecar (if any; on a re-run only where the crop's caption
    still holds what crop wrote, see prep.carrycaption) and a metadata sidecar with `source`
    (path relative to `out`, sha256, box in source pixels), `faces` (in the CROP's pixel
    coordinates, with score and detector; [] when the detector found none and the crop fell back
    to the focal point) and `crop` (preset, box, detector, fit, padded/widened, upscale flag, and
    `lossless`: true when the crop was cut from a JPEG without re-encoding; its box then starts on
    the 8/16 px iMCU grid, grown up/left from `planned_box` or shifted there at the same size).
    `detector` overrides `options.detector` (tests pass a detector built on an explicit model file).
    """
    src, out = Path(src), Path(out)
    options = options.check()
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    if src.is_dir():
        check_separate(src, out)
    detector = detector or detector_from_name(options.detector, reporter)
    jobs, problems, renamed = _jobs(src)
    if not jobs and not problems:
        raise NoImages.in_folder(src, "nothing was cropped")
    for group in renamed:
        reporter.note(group.message("crops"))
    wants_lossless = options.lossless_jpeg and any(j.path.suffix.lower() in (".jpg", ".jpeg") for j in jobs)
    turbo = load_turbojpeg() if wants_lossless else None
    if wants_lossless and turbo is None:
        reporter.note(f"lossless JPEG crops are off (JPEG crops are decoded and re-encoded); to enable: {ENABLE_HINT}")
    earlier = EarlierCrops(out)
    outcome = run_step(jobs, lambda job: crop_image(job, out, options, detector, turbo, earlier), step="crop",
                       name=lambda job: str(job.path), reporter=reporter, label="cropping",
                       workers=options.workers)
    result = CropRun(dropped=problems + outcome.dropped, renamed=renamed)
    superseded: list[Path] = []
    edited: list[Carry] = []
    for done in outcome.done:
        result.done.extend(done.written)
        if done.reused:
            result.reused.extend(done.written)
        result.dropped.extend(Drop(str(done.source), "crop", reason) for reason in done.skipped)
        superseded.extend(done.superseded)
        edited.extend(done.edited_captions)
    settled = settle_edited(out, edited, STEP, overwrite=options.overwrite_captions, reporter=reporter)
    result.captions_kept.extend(out / name for name in settled.kept)
    result.captions_replaced.extend(out / name for name in settled.replaced)
    if superseded:
        shown = ", ".join(str(p.relative_to(out)) for p in superseded[:3]) + (" …" if len(superseded) > 3 else "")
        reporter.note(f"{len(superseded)} earlier crop(s) in {out} were cut from a source that has changed since "
                      f"and are left as they were: {shown}; delete them if that version should not be trained")
    return result


@dataclass
class CropRun(StepResult[Path]):
    """A crop run's crops (`done`: all of them, including `reused` ones already there with these
    settings, which were not cut again) and the images it left out. `captions_kept`: crop captions
    edited since crop wrote them, left as they are; `captions_replaced`: those --overwrite-captions
    replaced (journalled)."""

    reused: list[Path] = field(default_factory=list)
    captions_kept: list[Path] = field(default_factory=list)
    captions_replaced: list[Path] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # sources sharing a stem, cropped under new names


@dataclass(frozen=True)
class CropSummary:
    """What a crop run produced, read back from the crops' metadata (for the CLI's table)."""

    crops: int
    by_preset: dict[str, int]
    by_fit: dict[str, int]
    focal: int      # crops of images where no face was found (`faces: []`)
    upscale: int    # crops below --min-size, flagged for upscaling


def summarise_crops(paths: Sequence[Path]) -> CropSummary:
    from collections import Counter

    crops = [read_meta(p).get("crop") or {} for p in paths]
    return CropSummary(len(crops), dict(Counter(c.get("preset", "?") for c in crops)),
                       dict(Counter(c.get("fit", "?") for c in crops)),
                       sum(1 for c in crops if c.get("preset") == "focal"),
                       sum(1 for c in crops if c.get("upscale")))
