"""Background cleanup: flatten transparency (always) and optionally replace the background.

Trainers ignore alpha, so transparent pixels must become a solid colour or the model learns
whatever junk sits under them. Replacing a busy background (`--background`) needs a subject mask,
from a segmenter behind one small interface:

- an ONNX segmentation model from the registry (`anime-seg`: skytnt's ISNet for drawn
  characters; `human-seg`: MODNet for photos), run with onnxruntime;
- `grabcut`: OpenCV GrabCut, needing no weights, seeded from a detected face (grown to a person
  box) or, without a face, from a rectangle inset from the border;
- an image's own alpha channel, when it has one, is its mask and no segmenter runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image, ImageFilter

from prep import models
from prep.atomic import write_bytes_atomic
from prep.errors import UsageError
from prep.faces import FaceDetector
from prep.images import DEFAULT_MAX_PIXELS, WHITE, flatten_alpha, open_image, save_image_atomic
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Box, Drop
from prep.runner import StepResult, run_step
from prep.sidecars import caption_path, read_caption, read_meta, update_meta, write_caption

Background = Literal["remove", "white", "colour", "blur"]
BACKGROUNDS = ("remove", "white", "colour", "blur")
SEGMENTER_NAMES = ("auto", "grabcut", "anime-seg", "human-seg")
BACKUP_DIR = ".loraprep/backup"  # inside the cleaned folder; scans skip `.loraprep`
ALPHA_SUFFIXES = frozenset({".png", ".webp"})


class Segmenter(Protocol):
    """Subject mask for one RGB uint8 image: float32 (H, W) in [0, 1], 1 = subject."""

    name: str

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


# ---- ONNX segmentation models

@dataclass(frozen=True)
class SegmenterInput:
    """How a segmentation model wants its input: a fixed letterboxed square, or the image resized
    so its long side is `size` (sides rounded to `multiple`); normalised as (x/255 - mean) / std."""

    size: int
    letterbox: bool
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    multiple: int = 32


SEGMENTER_MODELS: dict[str, tuple[str, SegmenterInput]] = {
    "anime-seg": ("isnetis.onnx", SegmenterInput(1024, letterbox=True)),
    "human-seg": ("modnet.onnx", SegmenterInput(512, letterbox=False, mean=(0.5,) * 3, std=(0.5,) * 3)),
}


class OnnxSegmenter:
    """A registry segmentation model (one input image, first output a (1, 1, H, W) matte in [0, 1])."""

    def __init__(self, model_path: Path, spec: SegmenterInput, *, name: str = "onnx", threads: int = 1) -> None:
        self._session = models.onnx_cpu_session(model_path, "segmentation model", name, threads=threads)
        self._input = self._session.get_inputs()[0].name
        self.spec = spec
        self.name = name

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        import cv2

        height, width = image.shape[:2]
        size = self.spec.size
        if self.spec.letterbox:
            scale = size / max(width, height)
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            canvas = np.zeros((size, size, 3), np.float32)
            left, top = (size - new_w) // 2, (size - new_h) // 2
            canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
            region = (left, top, left + new_w, top + new_h)
        else:
            scale = size / max(width, height)
            m = self.spec.multiple
            new_w, new_h = max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)
            canvas = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32)
            region = (0, 0, new_w, new_h)
        tensor = (canvas / 255.0 - np.array(self.spec.mean, np.float32)) / np.array(self.spec.std, np.float32)
        return tensor.transpose(2, 0, 1)[None].astype(np.float32), region

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        tensor, (x0, y0, x1, y1) = self._prepare(image)
        matte = np.asarray(self._session.run(None, {self._input: tensor})[0], np.float32)
        matte = matte.reshape(matte.shape[-2:])[y0:y1, x0:x1]
        matte = cv2.resize(matte, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(matte, 0.0, 1.0)


# ---- GrabCut (no weights)

def person_box(face: Box, size: tuple[int, int]) -> Box:
    """A generous box for the person around a face: a few face-widths wide, down to the bottom."""
    width, height = face[2] - face[0], face[3] - face[1]
    return (max(0, int(face[0] - 2.2 * width)), max(0, int(face[1] - 0.8 * height)),
            min(size[0], int(face[2] + 2.2 * width)), size[1])


def inset_box(size: tuple[int, int], fraction: float = 0.04) -> Box:
    dx, dy = max(1, int(size[0] * fraction)), max(1, int(size[1] * fraction))
    return (dx, dy, size[0] - dx, size[1] - dy)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pockets enclosed by the subject (between arms, in hair) become subject."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


class GrabCutSegmenter:
    """OpenCV GrabCut on a reduced copy, seeded from a detected face's person box or the border."""

    name = "grabcut"

    def __init__(self, detector: FaceDetector | None = None, *, work_size: int = 320, iterations: int = 4) -> None:
        self.detector = detector
        self.work_size = work_size
        self.iterations = iterations

    def seed_box(self, image: np.ndarray) -> Box:
        """Person box around the largest face (found on a ≤640 px copy), else a border inset."""
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, 640 / max(width, height))
        view = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA) if scale < 1 else image
        faces = self.detector(np.ascontiguousarray(view)) if self.detector is not None else []
        if not faces:
            return inset_box((width, height))
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        face = tuple(int(round(v / scale)) for v in largest.box)
        box = person_box(face, (width, height))  # type: ignore[arg-type]
        return box if box != (0, 0, width, height) else inset_box((width, height))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        height, width = image.shape[:2]
        x0, y0, x1, y1 = self.seed_box(image)
        scale = min(1.0, self.work_size / max(width, height))
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else image
        small = np.ascontiguousarray(small[:, :, ::-1])
        sx0, sy0 = int(x0 * scale), int(y0 * scale)
        sx1, sy1 = min(small.shape[1], int(np.ceil(x1 * scale))), min(small.shape[0], int(np.ceil(y1 * scale)))
        rect = (sx0, sy0, max(1, sx1 - sx0), max(1, sy1 - sy0))
        labels = np.zeros(small.shape[:2], np.uint8)
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(small, labels, rect, background, foreground, self.iterations, cv2.GC_INIT_WITH_RECT)
        subject = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        subject = fill_holes(subject)
        matte = cv2.resize(subject.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(matte, 0.0, 1.0)


def segmenter_from_name(name: str, reporter: Reporter = SILENT, *, detector: FaceDetector | None = None,
                        model_dir: Path | None = None) -> Segmenter:
    """The segmenter called `name`; `auto` takes a registry model when pulled, else GrabCut, and says so."""
    if name == "grabcut":
        return GrabCutSegmenter(detector)
    if name in SEGMENTER_MODELS:
        filename, spec = SEGMENTER_MODELS[name]
        folder = Path(model_dir) if model_dir is not None else models.resolve(name)
        return OnnxSegmenter(folder / filename, spec, name=name)
    if name != "auto":
        raise UsageError(f"unknown segmenter '{name}'", hint=f"choose one of: {', '.join(SEGMENTER_NAMES)}")
    for candidate in SEGMENTER_MODELS:
        if models.is_available(candidate):
            reporter.note(f"segmenter (auto): {candidate}")
            return segmenter_from_name(candidate, reporter, model_dir=model_dir)
    reporter.note("segmenter (auto): grabcut (no segmentation model pulled; "
                  "`loraprep models pull anime-seg` or `human-seg` for better masks)")
    return GrabCutSegmenter(detector)


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

    def check(self) -> CleanOptions:
        if self.background is not None and self.background not in BACKGROUNDS:
            raise UsageError(f"unknown --background '{self.background}'", hint=f"choose one of: {', '.join(BACKGROUNDS)}")
        if self.segmenter not in SEGMENTER_NAMES:
            raise UsageError(f"unknown segmenter '{self.segmenter}'", hint=f"choose one of: {', '.join(SEGMENTER_NAMES)}")
        if not all(0 <= c <= 255 for c in self.colour) or len(self.colour) != 3:
            raise UsageError(f"colour {self.colour} is not an RGB triple of 0-255 values")
        return self


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
    target: Path | None  # None: nothing to change (in place) or a dry run
    before: Image.Image | None = None
    after: Image.Image | None = None


@dataclass(frozen=True)
class _Job:
    path: Path
    rel: Path


def clean_image(image: Image.Image, options: CleanOptions, segmenter: Segmenter | None
                ) -> tuple[Image.Image, np.ndarray | None, str]:
    """The cleaned image, the mask used (None when only flattened) and where the mask came from."""
    matte = own_alpha(image)
    if options.background is None:
        return flatten_alpha(image, options.colour), matte, "alpha" if matte is not None else "none"
    rgb = np.asarray(flatten_alpha(image, options.colour).convert("RGB"))
    origin = "alpha"
    if matte is None:
        if segmenter is None:
            raise UsageError("a background mode needs a segmenter")
        matte, origin = segmenter(rgb), segmenter.name
    return composite(rgb, matte, options.background, options.colour, options.blur_radius), matte, origin


def _target(job: _Job, folder: Path, out: Path | None, has_alpha: bool) -> Path:
    base = folder if out is None else out
    target = base / job.rel
    if has_alpha and target.suffix.lower() not in ALPHA_SUFFIXES:
        target = target.with_suffix(".png")
    return target


def _clean_one(job: _Job, folder: Path, out: Path | None, options: CleanOptions,
               segmenter: Segmenter | None, mask_dir: Path | None) -> CleanResult:
    image = open_image(job.path, max_pixels=options.max_pixels)
    result, matte, origin = clean_image(image, options, segmenter)
    if options.dry_run:
        return CleanResult(job.path, None, _small(image), _small(result))
    changed = result is not image
    if out is None and not changed:
        return CleanResult(job.path, None)
    target = _target(job, folder, out, "A" in result.getbands())
    info = {"alpha_flattened": "A" in image.getbands(), "background": options.background,
            "colour": list(options.colour), "mask": origin}
    if out is None and options.backup:
        backup = folder / BACKUP_DIR / job.rel
        if not backup.exists():
            write_bytes_atomic(backup, job.path.read_bytes())
        info["backup"] = (Path(BACKUP_DIR) / job.rel).as_posix()
    if changed:
        save_image_atomic(result, target)
    else:
        write_bytes_atomic(target, job.path.read_bytes())
    if target != job.path:
        _carry_sidecars(job.path, target, options.caption_extension)
        if out is None:
            job.path.unlink()
    if mask_dir is not None and matte is not None:
        mask = Image.fromarray(np.round(matte * 255).astype(np.uint8), "L")
        save_image_atomic(mask, (mask_dir / job.rel).with_suffix(".png"))
    update_meta(target, clean=info)
    return CleanResult(job.path, target)


def _carry_sidecars(source: Path, target: Path, extension: str) -> None:
    caption = read_caption(caption_path(source, extension))
    if caption is not None and caption_path(source, extension) != caption_path(target, extension):
        write_caption(caption_path(target, extension), caption)
    meta = read_meta(source)
    if meta:
        update_meta(target, **meta)


def _small(image: Image.Image, size: int = 384) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size))
    return copy


def clean_folder(folder: Path, options: CleanOptions = CleanOptions(), reporter: Reporter = SILENT,
                 out: Path | None = None, *, segmenter: Segmenter | None = None,
                 detector: FaceDetector | None = None) -> StepResult[Path]:
    """Clean every image under `folder`: flatten alpha, and replace the background when asked.

    Writes to `out` (same sub-folders, captions and metadata carried), or with `in_place` over the
    originals, each kept once under `<folder>/.loraprep/backup/`. With neither, `out` defaults to
    the sibling folder `<folder>-clean`. Each written image's metadata gets a `clean` section.
    A dry run writes only a before/after contact sheet; `done` then holds the sheet's path.
    """
    folder = Path(folder)
    options = options.check()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    if options.in_place and out is not None:
        raise UsageError("--in-place and --out exclude each other")
    if out is not None and Path(out).resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"--out {out} is inside {folder}", hint="write to a separate folder, or use --in-place")
    if not options.in_place and out is None:
        out = folder.with_name(folder.name + "-clean")
        if not options.dry_run:
            reporter.note(f"writing cleaned images to {out} (use --in-place to overwrite, with a backup)")
    if options.background is not None and segmenter is None:
        if detector is None and options.segmenter in ("auto", "grabcut"):
            from prep.faces import detector_from_name

            detector = detector_from_name("auto", reporter)
        segmenter = segmenter_from_name(options.segmenter, reporter, detector=detector)
    mask_dir = None
    if options.masks and not options.dry_run:
        mask_dir = options.mask_dir or (out or folder).with_name((out or folder).name + "-masks")
    from prep.scan import walk_images

    problems: list[Drop] = []
    jobs = [_Job(p, p.relative_to(folder)) for p in walk_images(folder, problems)]
    cleaned = run_step(jobs, lambda job: _clean_one(job, folder, None if options.in_place else out, options,
                                                    segmenter, mask_dir),
                       step="clean", name=lambda job: str(job.path), reporter=reporter, label="cleaning",
                       workers=options.workers)
    dropped = problems + cleaned.dropped
    if options.dry_run:
        sheet = options.sheet or folder.with_name(folder.name + "-clean-preview.png")
        _write_preview(cleaned.done, folder, sheet)
        return StepResult(done=[sheet], dropped=dropped)
    return StepResult(done=[r.target for r in cleaned.done if r.target is not None], dropped=dropped)


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
