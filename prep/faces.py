"""Face detectors behind one small interface, and the rule for choosing one.

A detector is a callable over one RGB uint8 array returning `Face`s in that array's pixels. The
crop step hands it a reduced copy of the image and scales the boxes back, so every backend sees
the size it works best at. Backends:

- `yunet`: OpenCV's `FaceDetectorYN` with the YuNet ONNX from the model registry.
- `libfacedetection`: the `yuface` wheel (weights compiled in: works offline, x86_64 only).
- `haar`: OpenCV's bundled frontal-face cascade, the always-available last resort.
- `anime`: deepghs' YOLOv8 anime face detector ONNX, run with onnxruntime; letterbox, decoding
  and NMS are the pure functions below so they can be tested on a constructed graph.
- `auto`: the best one available, stated through the reporter; only `auto` falls back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from prep import models
from prep.errors import ModelNotAvailable, UsageError
from prep.progress import SILENT, Reporter
from prep.records import Face

DETECTOR_NAMES = ("auto", "yunet", "libfacedetection", "haar", "anime")
YUNET_FILE = "face_detection_yunet.onnx"
ANIME_FILE = "anime_face_detection.onnx"


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in one RGB uint8 image (H, W, 3); boxes are in that image's pixels."""

    name: str

    def __call__(self, image: np.ndarray) -> list[Face]: ...


def _clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, int, int, int]:
    return (max(0, int(round(x0))), max(0, int(round(y0))),
            min(width, int(round(x1))), min(height, int(round(y1))))


def _faces_from_xywh(rows: np.ndarray, scores: np.ndarray, name: str, size: tuple[int, int]) -> list[Face]:
    faces = []
    for (x, y, w, h), score in zip(rows.tolist(), scores.tolist(), strict=True):
        box = _clip_box(x, y, x + w, y + h, *size)
        if box[2] > box[0] and box[3] > box[1]:
            faces.append(Face(box, float(score), name))
    return sorted(faces, key=lambda f: -f.score)


class _PerThread:
    """OpenCV detector objects keep per-call state; each worker thread gets its own instance."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> object:
        instance = getattr(self._local, "instance", None)
        if instance is None:
            instance = self._local.instance = self._factory()
        return instance


class YuNetDetector:
    """OpenCV YuNet: fast and accurate on photos, and finds many anime faces too."""

    name = "yunet"

    def __init__(self, model_path: Path, *, score_threshold: float = 0.6, nms_threshold: float = 0.3) -> None:
        import cv2

        if not Path(model_path).is_file():
            raise ModelNotAvailable(f"YuNet model file {model_path} does not exist",
                                    hint="run `loraprep models pull yunet`")
        self.model_path = Path(model_path)
        self._instances = _PerThread(lambda: cv2.FaceDetectorYN.create(
            str(self.model_path), "", (320, 320), score_threshold, nms_threshold, 5000))

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        detector = self._instances.get()
        detector.setInputSize((width, height))  # type: ignore[attr-defined]
        _, found = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))  # type: ignore[attr-defined]
        if found is None:
            return []
        return _faces_from_xywh(found[:, :4], found[:, 14], self.name, (width, height))


class LibFaceDetectionDetector:
    """libfacedetection through the `yuface` wheel: weights compiled in, no download ever."""

    name = "libfacedetection"

    def __init__(self, *, score_threshold: float = 0.6) -> None:
        try:
            import yuface
        except ImportError as exc:
            raise ModelNotAvailable(
                "the libfacedetection backend needs the `yuface` package, which is not installed",
                hint="`pip install yuface` (wheels exist for x86_64 Linux and Windows only), "
                     "or use --detector yunet / haar") from exc
        self._detect = yuface.detect
        self.score_threshold = score_threshold

    def __call__(self, image: np.ndarray) -> list[Face]:
        import warnings

        height, width = image.shape[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns above 960 px; the crop step downscales first
            scores, boxes, _ = self._detect(np.ascontiguousarray(image[:, :, ::-1]), conf=self.score_threshold)
        return _faces_from_xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                np.asarray(scores, dtype=np.float64) / 100.0, self.name, (width, height))


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: always there, frontal photos only, no calibrated score.

    The score reported is 1.0 for every hit; the cascade has no probability to offer.
    """

    name = "haar"

    def __init__(self, *, cascade: str = "haarcascade_frontalface_default.xml", min_neighbors: int = 5) -> None:
        import cv2

        path = Path(cv2.data.haarcascades) / cascade
        if not path.is_file():
            raise ModelNotAvailable(f"OpenCV's Haar cascade {path} is missing",
                                    hint="install opencv-python-headless<5 (5.x wheels ship no cascades)")
        self._instances = _PerThread(lambda: cv2.CascadeClassifier(str(path)))
        self.min_neighbors = min_neighbors

    def __call__(self, image: np.ndarray) -> list[Face]:
        import cv2

        height, width = image.shape[:2]
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        minimum = max(24, min(width, height) // 20)
        found = self._instances.get().detectMultiScale(  # type: ignore[attr-defined]
            grey, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(minimum, minimum))
        rows = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        return _faces_from_xywh(rows, np.ones(len(rows)), self.name, (width, height))


# ---- YOLOv8 post-processing (pure functions, tested on a constructed ONNX graph)

def letterbox(image: np.ndarray, size: int, pad_value: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Fit the image inside a size×size square keeping aspect, centred, padded with grey.

    Returns the square, the scale applied, and the (left, top) padding, which `unletterbox` undoes.
    """
    import cv2

    height, width = image.shape[:2]
    scale = min(size / width, size / height)
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    square = np.full((size, size, 3), pad_value, dtype=np.uint8)
    square[top:top + new_h, left:left + new_w] = resized
    return square, scale, (left, top)


def decode_yolov8(output: np.ndarray, score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv8 head output (1, 4 + classes, anchors) of centre-x, centre-y, w, h and class scores
    → corner boxes (N, 4), best scores (N,) and class ids (N,) above the threshold."""
    predictions = np.asarray(output, dtype=np.float32)
    if predictions.ndim == 3:
        predictions = predictions[0]
    if predictions.ndim != 2 or predictions.shape[0] < 5:
        raise ValueError(f"expected YOLOv8 output (1, 4+classes, anchors), got {np.shape(output)}")
    class_scores = predictions[4:]
    classes = class_scores.argmax(axis=0)
    scores = class_scores.max(axis=0)
    keep = scores >= score_threshold
    cx, cy, w, h = predictions[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, scores[keep], classes[keep]


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one corner box against many."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        if order:
            overlaps = box_iou(boxes[best], boxes[order])
            order = [i for i, o in zip(order, overlaps, strict=True) if o <= iou_threshold]
    return kept


def unletterbox(boxes: np.ndarray, scale: float, pad: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Map corner boxes from the letterboxed square back to the original image, clipped to it."""
    mapped = (np.asarray(boxes, dtype=np.float64) - [pad[0], pad[1], pad[0], pad[1]]) / scale
    mapped[:, [0, 2]] = mapped[:, [0, 2]].clip(0, size[0])
    mapped[:, [1, 3]] = mapped[:, [1, 3]].clip(0, size[1])
    return mapped


class AnimeYoloDetector:
    """deepghs' YOLOv8 anime face detector (ONNX, one class) through onnxruntime."""

    name = "anime"

    def __init__(self, model_path: Path, *, input_size: int = 640, score_threshold: float = 0.25,
                 iou_threshold: float = 0.7, threads: int = 1) -> None:
        import onnxruntime as ort

        if not Path(model_path).is_file():
            raise ModelNotAvailable(f"anime face model file {model_path} does not exist",
                                    hint="run `loraprep models pull anime-face`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        shape = self._session.get_inputs()[0].shape
        fixed = shape[-1] if isinstance(shape[-1], int) else None
        self.input_size = fixed or input_size
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        square, scale, pad = letterbox(image, self.input_size)
        tensor = square.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        output = self._session.run(None, {self._input: tensor})[0]
        boxes, scores, _ = decode_yolov8(output, self.score_threshold)
        if len(boxes) == 0:
            return []
        kept = nms(boxes, scores, self.iou_threshold)
        mapped = unletterbox(boxes[kept], scale, pad, (width, height))
        faces = [Face(_clip_box(*row, width, height), float(scores[i]), self.name)
                 for row, i in zip(mapped.tolist(), kept, strict=True)]
        return [f for f in faces if f.box[2] > f.box[0] and f.box[3] > f.box[1]]


class CombinedDetector:
    """Runs several detectors and merges their boxes (photo + anime), overlapping boxes once."""

    def __init__(self, detectors: Sequence[FaceDetector], iou_threshold: float = 0.3) -> None:
        self.detectors = tuple(detectors)
        self.name = "+".join(d.name for d in detectors)
        self.iou_threshold = iou_threshold

    def __call__(self, image: np.ndarray) -> list[Face]:
        faces = [face for detector in self.detectors for face in detector(image)]
        if len(faces) < 2:
            return faces
        boxes = np.array([f.box for f in faces], dtype=np.float64)
        scores = np.array([f.score for f in faces])
        return [faces[i] for i in nms(boxes, scores, self.iou_threshold)]


def _model_file(name: str, filename: str, model_dir: Path | None) -> Path:
    folder = Path(model_dir) if model_dir is not None else models.resolve(name)
    path = folder / filename
    if not path.is_file():
        raise ModelNotAvailable(f"model file {path} does not exist",
                                hint=f"run `loraprep models pull {name}`, or pass the folder that holds {filename}")
    return path


def _build(name: str, model_dir: Path | None) -> FaceDetector:
    if name == "yunet":
        return YuNetDetector(_model_file("yunet", YUNET_FILE, model_dir))
    if name == "libfacedetection":
        return LibFaceDetectionDetector()
    if name == "haar":
        return HaarDetector()
    if name == "anime":
        return AnimeYoloDetector(_model_file("anime-face", ANIME_FILE, model_dir))
    raise UsageError(f"unknown face detector '{name}'", hint=f"choose one of: {', '.join(DETECTOR_NAMES)}")


def detector_from_name(name: str, reporter: Reporter = SILENT, *, model_dir: Path | None = None) -> FaceDetector:
    """The detector called `name`; `auto` picks the best available and says which.

    An explicitly named detector whose model is missing raises `ModelNotAvailable` (with the
    `loraprep models pull` hint) instead of silently running a weaker one. Under `auto` the order
    is yunet → libfacedetection → haar, joined by the anime detector when its model is present
    (YuNet misses many drawn faces).
    """
    if name != "auto":
        detector = _build(name, model_dir)
        reporter.note(f"face detector: {detector.name}")
        return detector
    chosen: list[FaceDetector] = []
    skipped: list[str] = []
    for candidate in ("yunet", "libfacedetection", "haar"):
        try:
            chosen.append(_build(candidate, model_dir))
            break
        except ModelNotAvailable as exc:
            skipped.append(f"{candidate} ({exc.message})")
    try:
        chosen.append(_build("anime", model_dir))
    except ModelNotAvailable:
        pass
    detector = chosen[0] if len(chosen) == 1 else CombinedDetector(chosen)
    why = f"; not available: {', '.join(skipped)}" if skipped else ""
    reporter.note(f"face detector (auto): {detector.name}{why}")
    return detector
