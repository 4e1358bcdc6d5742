"""Where the subject is: a mask (float32 (H, W) in [0, 1], 1 = subject) for background cleanup.

Sources, best first under `auto`:

- the image's own alpha channel (the artist already drew the mask);
- `flat`: a sprite on one flat colour; the background is that colour flood-filled in from the
  border, so colours inside the subject that match it (eye whites, a white shirt) stay;
- an ONNX segmentation model from the registry (`anime-seg`, `human-seg`), when pulled;
- `grabcut`: OpenCV GrabCut, needing no weights, seeded with EVERY detected face as sure
  foreground, a torso below each face as sure foreground and a body-sized region around each as
  probable foreground.

A mask that would remove a detected face, or keeps under 5% or over 98% of the image, is not
believable: `mask_problem` says why, and the caller leaves that image's background alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from prep import models
from prep.errors import UsageError
from prep.faces import FaceDetector, detect_faces
from prep.focal import FLAT_TOLERANCE, flat_border
from prep.progress import SILENT, Reporter
from prep.records import Box

SEGMENTER_NAMES = ("auto", "flat", "grabcut", "anime-seg", "human-seg")
MIN_KEPT, MAX_KEPT = 0.05, 0.98
FACE_KEPT = 0.8  # share of a face's central region a believable mask keeps


class Segmenter(Protocol):
    """Subject mask for one RGB uint8 image given the faces found in it (boxes in its pixels);
    None when this segmenter has no answer for the image (e.g. `flat` on a busy border)."""

    name: str

    def __call__(self, image: np.ndarray, faces: Sequence[Box] = ()) -> np.ndarray | None: ...


# ---- plausibility (pure)

def face_core(face: Box) -> Box:
    """The central half (by side) of a face box: skin, eyes and mouth, not the corners' hair or sky."""
    w, h = face[2] - face[0], face[3] - face[1]
    return (face[0] + w // 4, face[1] + h // 4, face[2] - w // 4, face[3] - h // 4)


def mask_problem(matte: np.ndarray, faces: Sequence[Box]) -> str | None:
    """Why the mask is not believable, or None: it drops a detected face (keeps under 80% of the
    face's core), or keeps under 5% / over 98% of the image."""
    subject = matte > 0.5
    kept = float(subject.mean())
    if kept < MIN_KEPT:
        return f"the mask keeps only {kept:.0%} of the image (under {MIN_KEPT:.0%})"
    if kept > MAX_KEPT:
        return f"the mask keeps {kept:.0%} of the image (over {MAX_KEPT:.0%}): no background was found"
    for number, face in enumerate(faces, start=1):
        x0, y0, x1, y1 = face_core(face)
        core = subject[y0:y1, x0:x1]
        if core.size and float(core.mean()) < FACE_KEPT:
            return (f"the mask would remove face {number} at {list(face)} "
                    f"(keeps {float(core.mean()):.0%} of it)")
    return None


# ---- flat backgrounds: flood fill from the border

def flat_background(image: np.ndarray, tolerance: int = FLAT_TOLERANCE) -> np.ndarray | None:
    """Subject mask of an image on one flat colour (`prep.focal.flat_border`), or None when its
    border is not flat: the background is every pixel within `tolerance` of that colour that
    connects to the border."""
    import cv2

    colour = flat_border(image, tolerance)
    if colour is None:
        return None
    near = (np.abs(image[:, :, :3].astype(np.int16) - colour) <= tolerance).all(axis=2).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge[edge != 0])  # label 0: the pixels unlike the border colour
    return (~background).astype(np.float32)


class FlatSegmenter:
    """Sprites and product shots on one colour: exact, instant, no model."""

    name = "flat"

    def __call__(self, image: np.ndarray, faces: Sequence[Box] = ()) -> np.ndarray | None:
        return flat_background(image)


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

    def __call__(self, image: np.ndarray, faces: Sequence[Box] = ()) -> np.ndarray:
        import cv2

        tensor, (x0, y0, x1, y1) = self._prepare(image)
        matte = np.asarray(self._session.run(None, {self._input: tensor})[0], np.float32)
        matte = matte.reshape(matte.shape[-2:])[y0:y1, x0:x1]
        matte = cv2.resize(matte, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(matte, 0.0, 1.0)


# ---- GrabCut seeded with every face (no weights)

GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD = 0, 1, 2, 3  # cv2.GC_* without importing cv2 for the pure seeding


def person_box(face: Box, size: tuple[int, int]) -> Box:
    """A generous box for the person around a face: a few face-widths wide, down to the bottom."""
    width, height = face[2] - face[0], face[3] - face[1]
    return (max(0, int(face[0] - 2.2 * width)), max(0, int(face[1] - 0.8 * height)),
            min(size[0], int(face[2] + 2.2 * width)), size[1])


def torso_box(face: Box, size: tuple[int, int]) -> Box:
    """Neck and chest right below a face (as wide as the face, 1.5 faces tall): the body prior."""
    width, height = face[2] - face[0], face[3] - face[1]
    return (max(0, int(face[0] + 0.1 * width)), min(size[1], face[3]),
            min(size[0], int(face[2] - 0.1 * width)), min(size[1], int(face[3] + 1.5 * height)))


def grabcut_seeds(size: tuple[int, int], faces: Sequence[Box], border: float = 0.03) -> np.ndarray:
    """GrabCut's starting labels (H, W) for an image of `size` (width, height).

    Every face and the torso below it are sure foreground, each person box probable foreground,
    the rest probable background; a thin frame is sure background outside the person boxes and
    probable background inside them (a close-up's edges still give GrabCut background samples).
    With no face, everything inside the frame is probable foreground (GrabCut's rectangle mode).
    """
    width, height = size
    labels = np.full((height, width), GC_PR_BGD if faces else GC_PR_FGD, np.uint8)
    people = np.zeros((height, width), bool)
    for face in faces:
        x0, y0, x1, y1 = person_box(face, size)
        people[y0:y1, x0:x1] = True
    labels[people] = GC_PR_FGD
    frame = np.ones((height, width), bool)
    dx, dy = max(1, round(width * border)), max(1, round(height * border))
    frame[dy:height - dy, dx:width - dx] = False
    labels[frame & ~people] = GC_BGD
    labels[frame & people] = GC_PR_BGD
    for face in faces:
        x0, y0, x1, y1 = torso_box(face, size)
        labels[y0:y1, x0:x1] = GC_FGD
        labels[face[1]:face[3], face[0]:face[2]] = GC_FGD
    return labels


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pockets enclosed by the subject (between arms, in hair) become subject."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


class GrabCutSegmenter:
    """OpenCV GrabCut on a reduced copy, seeded from every face (`grabcut_seeds`).

    Called without faces, it finds them itself with `detector` when it has one."""

    name = "grabcut"

    def __init__(self, detector: FaceDetector | None = None, *, work_size: int = 400, iterations: int = 4) -> None:
        self.detector = detector
        self.work_size = work_size
        self.iterations = iterations

    def __call__(self, image: np.ndarray, faces: Sequence[Box] | None = None) -> np.ndarray | None:
        import cv2

        if faces is None:
            faces = [f.box for f in detect_faces(image, self.detector)[0]] if self.detector is not None else []
        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
        small = np.ascontiguousarray(small[:, :, 2::-1])
        scaled = [(int(f[0] * scale), int(f[1] * scale), max(int(f[0] * scale) + 1, int(np.ceil(f[2] * scale))),
                   max(int(f[1] * scale) + 1, int(np.ceil(f[3] * scale)))) for f in faces]
        labels = grabcut_seeds(size, scaled)
        if not np.isin(labels, (GC_BGD, GC_PR_BGD)).any() or not np.isin(labels, (GC_FGD, GC_PR_FGD)).any():
            return None  # GrabCut needs samples of both; the people fill the whole picture
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(small, labels, None, background, foreground, self.iterations, cv2.GC_INIT_WITH_MASK)
        subject = fill_holes((labels == GC_FGD) | (labels == GC_PR_FGD))
        matte = cv2.resize(subject.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(matte, 0.0, 1.0)


# ---- choosing

@dataclass(frozen=True)
class MaskChooser:
    """The segmenters to try in order; the first with an answer gives the mask."""

    segmenters: tuple[Segmenter, ...]

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.segmenters)

    def __call__(self, image: np.ndarray, faces: Sequence[Box] = ()) -> tuple[np.ndarray, str] | None:
        for segmenter in self.segmenters:
            matte = segmenter(image, faces)
            if matte is not None:
                return matte, segmenter.name
        return None


def segmenter_from_name(name: str, reporter: Reporter = SILENT, *, model_dir: Path | None = None) -> MaskChooser:
    """The segmenter(s) called `name`. `auto`: a flat border by flood fill, else a pulled registry
    model, else GrabCut seeded from the faces the caller passes (a chooser always passes them);
    it says which it will use."""
    if name == "grabcut":
        return MaskChooser((GrabCutSegmenter(),))
    if name == "flat":
        return MaskChooser((FlatSegmenter(),))
    if name in SEGMENTER_MODELS:
        filename, spec = SEGMENTER_MODELS[name]
        folder = Path(model_dir) if model_dir is not None else models.resolve(name)
        return MaskChooser((OnnxSegmenter(folder / filename, spec, name=name),))
    if name != "auto":
        raise UsageError(f"unknown segmenter '{name}'", hint=f"choose one of: {', '.join(SEGMENTER_NAMES)}")
    for candidate in SEGMENTER_MODELS:
        if models.is_available(candidate):
            reporter.note(f"segmenter (auto): flat backgrounds by flood fill, else {candidate}")
            return MaskChooser((FlatSegmenter(), *segmenter_from_name(candidate, model_dir=model_dir).segmenters))
    reporter.note("segmenter (auto): flat backgrounds by flood fill, else GrabCut seeded from every face "
                  "(`loraprep models pull anime-seg` or `human-seg` for better masks of busy scenes)")
    return MaskChooser((FlatSegmenter(), GrabCutSegmenter()))
