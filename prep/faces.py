"""Face detectors behind one small interface, and the rule for choosing one.

A detector is a callable over one RGB uint8 array returning `Face`s in that array's pixels. The
crop step hands it a reduced copy of the image and scales the boxes back, so every backend sees
the size it works best at. Backends:

- `yunet`: OpenCV's YuNet ONNX, bundled in prep/data/ (a copy pulled with `loraprep models pull
  yunet` takes precedence), run on onnxruntime with `FaceDetectorYN`'s pre- and post-processing
  (same faces, a third of the CPU time).
- `anime-cascade`: nagadomi's lbpcascade_animeface, bundled in prep/data/, on OpenCV's
  CascadeClassifier: drawn faces with nothing downloaded.
- `libfacedetection`: the `yuface` wheel (weights compiled in: works offline, x86_64 only).
- `haar`: OpenCV's bundled frontal-face cascade, the last resort.
- `anime`: deepghs' YOLOv8 anime face detector ONNX (registry model), run with onnxruntime;
  letterbox, decoding and NMS are the pure functions below so they can be tested on a
  constructed graph.
- `auto`: every one available merged (`CombinedDetector`), stated through the reporter; only
  `auto` falls back.

Origins and licences of the bundled files: prep/data/LICENSES.md.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from prep import models
from prep.errors import ModelNotAvailable, UsageError
from prep.images import flatten_alpha
from prep.progress import SILENT, Reporter
from prep.records import Face

DETECT_SIZE = 640  # longest side of the reduced copy detection runs on (crop's --detect-size default)
DETECTOR_NAMES = ("auto", "yunet", "anime-cascade", "libfacedetection", "haar", "anime")
AUTO_DETECTORS = ("yunet", "anime-cascade", "anime", "libfacedetection")  # merged under `auto`, when present
YUNET_FILE = "face_detection_yunet.onnx"
ANIME_FILE = "anime_face_detection.onnx"
ANIME_CASCADE_FILE = "lbpcascade_animeface.xml"
ANIME_CASCADE_URL = models.download_url(models.spec("anime-cascade"), ANIME_CASCADE_FILE)  # at the pinned commit
DATA = models.BUNDLED_DIR  # the bundled detectors (see prep/data/LICENSES.md)


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
    """YuNet (OpenCV's face detector model): fast and accurate on photos, finds many anime faces too.

    The ONNX model runs on onnxruntime with OpenCV's `FaceDetectorYN` pre- and post-processing
    restated in `yunet_input` and `decode_yunet` (the tests hold the two to the same faces). On one
    CPU thread it is about 2.5× faster than OpenCV's DNN module, which on two threads burns twice
    the CPU for little gain: the crop step parallelises over images instead.
    """

    name = "yunet"

    def __init__(self, model_path: Path, *, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 5000, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        self._session = models.onnx_cpu_session(model_path, "YuNet model", "yunet", threads=threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in YUNET_STRIDES]
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def raw(self, image: np.ndarray) -> np.ndarray:
        """`FaceDetectorYN.detect`'s rows for an RGB image: x, y, w, h, five landmarks, score."""
        tensor = yunet_input(image)
        outputs = dict(zip(self._outputs, self._session.run(self._outputs, {self._input: tensor}), strict=True))
        return decode_yunet(outputs, tensor.shape[2:], self.score_threshold, self.nms_threshold, self.top_k)

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        rows = self.raw(image)
        return _faces_from_xywh(rows[:, :4], rows[:, 14], self.name, (width, height))


YUNET_STRIDES = (8, 16, 32)


def yunet_input(image: np.ndarray) -> np.ndarray:
    """The YuNet input blob for an RGB uint8 image: BGR, 0–255 floats, NCHW, padded with zeros on
    the right and bottom to multiples of 32 (what `FaceDetectorYN` feeds its network)."""
    height, width = image.shape[:2]
    pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
    tensor = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
    tensor[0, :, :height, :width] = image[:, :, 2::-1].transpose(2, 0, 1)
    return tensor


def decode_yunet(outputs: dict[str, np.ndarray], padded: Sequence[int], score_threshold: float,
                 nms_threshold: float, top_k: int = 5000) -> np.ndarray:
    """YuNet's per-stride outputs → (N, 15) rows of x, y, w, h, ten landmark coordinates, score,
    best first after non-maximum suppression; `padded` is the input's (height, width).

    Each stride-s grid cell (r, c) predicts a score √(cls·obj) (both clamped to [0, 1]), a centre
    ((c + dx)·s, (r + dy)·s), a size (e^w·s, e^h·s) and landmarks ((c + lx)·s, (r + ly)·s). As in
    OpenCV, suppression compares the boxes truncated to whole pixels and keeps at most `top_k`.
    """
    rows = []
    for stride in YUNET_STRIDES:
        cols = padded[1] // stride
        cls = np.clip(np.asarray(outputs[f"cls_{stride}"], dtype=np.float32).reshape(-1), 0, 1)
        obj = np.clip(np.asarray(outputs[f"obj_{stride}"], dtype=np.float32).reshape(-1), 0, 1)
        scores = np.sqrt(cls * obj)
        keep = np.flatnonzero(scores >= score_threshold)
        if keep.size == 0:
            continue
        bbox = np.asarray(outputs[f"bbox_{stride}"], dtype=np.float32).reshape(-1, 4)[keep]
        kps = np.asarray(outputs[f"kps_{stride}"], dtype=np.float32).reshape(-1, 10)[keep]
        cell_x = (keep % cols).astype(np.float32)[:, None]
        cell_y = (keep // cols).astype(np.float32)[:, None]
        centre = (np.hstack([cell_x, cell_y]) + bbox[:, :2]) * stride
        size = np.exp(bbox[:, 2:]) * stride
        landmarks = (kps + np.tile(np.hstack([cell_x, cell_y]), 5)) * stride
        rows.append(np.hstack([centre - size / 2, size, landmarks, scores[keep][:, None]]).astype(np.float32))
    if not rows:
        return np.zeros((0, 15), dtype=np.float32)
    found = np.vstack(rows)
    if len(found) == 1:
        return found
    whole = found[:, :4].astype(np.int64).astype(np.float64)  # OpenCV's Rect2i(int(x), int(y), int(w), int(h))
    corners = np.hstack([whole[:, :2], whole[:, :2] + whole[:, 2:]])
    return found[nms(corners, found[:, 14], nms_threshold)[:top_k]]


class LibFaceDetectionDetector:
    """libfacedetection through the `yuface` wheel: weights compiled in, no download ever.

    Its call holds the GIL, so the crop step's worker threads take turns in it; the OpenMP threads
    it starts inside are what spreads it over the cores (measured: half the wall time on two
    cores for 12% more CPU), so they are left at OpenMP's default.

    The library's first call initialises itself: inside a C++ static-initialisation guard it
    imports a Python module, which needs the GIL. Two threads making that first call together
    deadlock (one holds the guard and waits for the GIL, the other holds the GIL and waits for the
    guard; 1 run in 4-7 of `crop --workers 2` hung for good). So the constructor makes the first
    call itself, on the thread that builds the detector, before any worker exists, and a lock
    keeps later calls one at a time (they hold the GIL anyway, so the lock costs nothing).
    """

    name = "libfacedetection"

    def __init__(self, *, score_threshold: float = 0.6) -> None:
        try:
            from yuface.yuface import detect
        except ImportError as exc:
            raise ModelNotAvailable(
                "the libfacedetection backend needs the `yuface` package, which is not installed",
                hint="`pip install yuface` (wheels exist for x86_64 Linux and Windows only), "
                     "or use --detector yunet / haar") from exc
        # the compiled call: `yuface.detect` only adds the threshold and a warning above 960 px
        # (the crop step detects on a reduced copy), raised through the thread-unsafe warnings module
        self._detect = detect
        self._lock = threading.Lock()
        self.score_threshold = score_threshold
        self(np.zeros((32, 32, 3), np.uint8))  # the one-time initialisation, here and not in a worker

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with self._lock:
            found = np.asarray(self._detect(bgr), dtype=np.float64)
        rows = found.reshape(len(found), -1) if found.size else np.zeros((0, 5))  # confidence, x, y, w, h, …
        rows = rows[rows[:, 0] > self.score_threshold * 100]  # confidences are percentages
        return _faces_from_xywh(rows[:, 1:5], rows[:, 0] / 100.0, self.name, (width, height))


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


class AnimeCascadeDetector:
    """nagadomi's lbpcascade_animeface (MIT): an LBP cascade for drawn faces, run by OpenCV.

    Bundled in prep/data/; an install without that copy looks in the model cache's
    `anime-cascade/` folder (where a user can drop the 250 KB file from nagadomi's repository,
    `ANIME_CASCADE_URL`), and without either `auto` runs on YuNet alone and says so. A cascade has no
    probability; its score is made comparable with the networks' from how many neighbouring
    windows agreed (`cascade_score`), so merged detectors can rank and suppress boxes together.
    It scans a copy at most `work_size` px long: at 480 it found the same test faces as at 640 in
    under half the time; drawn faces under 1/20 of the picture's longest side are left to YuNet.
    """

    name = "anime-cascade"

    def __init__(self, path: Path | None = None, *, min_neighbors: int = 5, work_size: int = 480) -> None:
        import cv2

        path = Path(path) if path is not None else anime_cascade_file()
        if not path.is_file():
            raise ModelNotAvailable(f"the anime face cascade {ANIME_CASCADE_FILE} is not installed",
                                    hint=f"download {ANIME_CASCADE_URL} and save it as {path} "
                                         "(MIT, 250 KB), or use --detector yunet")
        if cv2.CascadeClassifier(str(path)).empty():
            raise ModelNotAvailable(f"the anime face cascade {path} could not be loaded",
                                    hint="reinstall loraprep; the file is damaged")
        self.path = path
        self._instances = _PerThread(lambda: cv2.CascadeClassifier(str(path)))
        self.min_neighbors = min_neighbors
        self.work_size = work_size

    def __call__(self, image: np.ndarray) -> list[Face]:
        import cv2

        height, width = image.shape[:2]
        grey = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.work_size / max(width, height))
        if scale < 1.0:
            grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        minimum = max(24, min(grey.shape) // 20)
        # scale steps of 1.15 (not the usual 1.1): the same faces on the test set at 70% of the time
        found, neighbours = self._instances.get().detectMultiScale2(  # type: ignore[attr-defined]
            grey, scaleFactor=1.15, minNeighbors=self.min_neighbors, minSize=(minimum, minimum))
        rows = np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale
        scores = cascade_score(np.asarray(neighbours, dtype=np.float64).reshape(-1))
        return _faces_from_xywh(rows, scores, self.name, (width, height))


def cascade_score(neighbours: np.ndarray) -> np.ndarray:
    """A cascade hit's neighbour count → a score on the networks' scale: n / (n + 5), so the
    minimum 5 agreeing windows score 0.5 and 20 score 0.8 (YuNet's typical hit is 0.8–0.95)."""
    return neighbours / (neighbours + 5.0)


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
        self._session = models.onnx_cpu_session(model_path, "anime face model", "anime-face", threads=threads)
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


def _scale_face(face: Face, scale: float, size: tuple[int, int]) -> Face:
    x0, y0, x1, y1 = face.box
    box = (max(0, math.floor(x0 * scale)), max(0, math.floor(y0 * scale)),
           min(size[0], math.ceil(x1 * scale)), min(size[1], math.ceil(y1 * scale)))
    return Face(box, face.score, face.detector)


def reduced_copy(image: Image.Image, longest: int) -> tuple[Image.Image, float]:
    """A copy whose longest side is at most `longest` (alpha kept), and the full/reduced scale.

    An integer box-filter reduction: several times cheaper than a resampling resize (or a second,
    draft-mode decode) of a full-size image, and all the detectors need.
    """
    factor = math.ceil(max(image.size) / longest)
    small = image.reduce(factor) if factor > 1 else image
    return small, image.width / small.width


def detect_faces(image: Image.Image | np.ndarray, detector: FaceDetector, detect_size: int = DETECT_SIZE,
                 size: tuple[int, int] | None = None) -> tuple[list[Face], np.ndarray, float]:
    """Faces in full-resolution pixels, found on a reduced copy; also returns that copy (RGB or
    RGBA, for the focal point and dead-space trim) and its scale. `size` is the full resolution
    when `image` is already a scaled decode of it (an RGB array, on the lossless JPEG path);
    without it, `image` is the full resolution. Crop and clean both detect through here, so both
    steps see the same faces."""
    if isinstance(image, np.ndarray) and max(image.shape[:2]) <= detect_size:
        small = rgb = image  # a scaled decode (or a picture) already small enough
        size = size or (image.shape[1], image.shape[0])
    else:
        full = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        size = size or full.size
        reduced, _ = reduced_copy(full, detect_size)
        small = np.asarray(reduced)
        rgb = small if reduced.mode == "RGB" else np.asarray(flatten_alpha(reduced))
    scale = size[0] / small.shape[1]
    return [_scale_face(f, scale, size) for f in detector(rgb)], small, scale


class CombinedDetector:
    """Runs several detectors and merges their boxes: a face two detectors found is kept once.

    Two boxes are the same face when they overlap by IoU above `iou_threshold` or one lies mostly
    (`nested`) inside the other: detectors frame a face at different sizes (the cascade takes in
    hair and chin), which IoU alone would count twice. Of the same face the box of the detector
    listed first is kept (the networks frame faces tightly and the crop margins are set for their
    boxes); its score is the best any detector gave that face, all scores being on one scale
    (probabilities for the networks, `cascade_score` for the cascade).
    """

    def __init__(self, detectors: Sequence[FaceDetector], iou_threshold: float = 0.3, nested: float = 0.7) -> None:
        self.detectors = tuple(detectors)
        self.name = "+".join(d.name for d in detectors)
        self.iou_threshold = iou_threshold
        self.nested = nested

    def __call__(self, image: np.ndarray) -> list[Face]:
        found = [(rank, face) for rank, detector in enumerate(self.detectors) for face in detector(image)]
        if len(found) < 2:
            return [face for _, face in found]
        boxes = np.array([f.box for _, f in found], dtype=np.float64)
        order = sorted(range(len(found)), key=lambda i: (found[i][0], -found[i][1].score))
        merged = []
        for kept, group in merge_boxes(boxes, order, self.iou_threshold, self.nested):
            face = found[kept][1]
            merged.append(Face(face.box, max(found[i][1].score for i in group), face.detector))
        return sorted(merged, key=lambda f: -f.score)


def merge_boxes(boxes: np.ndarray, order: Sequence[int], iou_threshold: float,
                nested: float) -> list[tuple[int, list[int]]]:
    """Greedy suppression in `order` (best first): each kept index with the indices it absorbed
    (itself included). A box is absorbed when it overlaps the kept one by IoU above
    `iou_threshold`, or when `nested` of the smaller box's area lies inside the other."""
    remaining = list(order)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    groups: list[tuple[int, list[int]]] = []
    while remaining:
        best, rest = remaining[0], remaining[1:]
        if not rest:
            groups.append((best, [best]))
            break
        iou = box_iou(boxes[best], boxes[rest])
        inter = iou * (areas[best] + areas[rest]) / (1.0 + iou)
        inside = inter / np.maximum(np.minimum(areas[best], areas[rest]), 1e-9)
        same = (iou > iou_threshold) | (inside >= nested)
        groups.append((best, [best] + [i for i, s in zip(rest, same, strict=True) if s]))
        remaining = [i for i, s in zip(rest, same, strict=True) if not s]
    return groups


def _model_file(name: str, filename: str, model_dir: Path | None) -> Path:
    folder = Path(model_dir) if model_dir is not None else models.resolve(name)
    path = folder / filename
    if not path.is_file():
        raise ModelNotAvailable(f"model file {path} does not exist",
                                hint=f"run `loraprep models pull {name}`, or pass the folder that holds {filename}")
    return path


def yunet_file(model_dir: Path | None = None) -> Path:
    """The YuNet model: from `model_dir` when given, else a pulled copy in the model cache
    (`loraprep models pull yunet`), else the one bundled in prep/data/."""
    if model_dir is not None:
        return _model_file("yunet", YUNET_FILE, model_dir)
    if models.is_available("yunet"):
        return models.model_path("yunet") / YUNET_FILE
    return DATA / YUNET_FILE


def anime_cascade_file() -> Path:
    """The bundled cascade when this install ships one, else its place in the model cache."""
    bundled = DATA / ANIME_CASCADE_FILE
    return bundled if bundled.is_file() else models.cache_dir() / "anime-cascade" / ANIME_CASCADE_FILE


def _build(name: str, model_dir: Path | None) -> FaceDetector:
    if name == "yunet":
        return YuNetDetector(yunet_file(model_dir))
    if name == "libfacedetection":
        return LibFaceDetectionDetector()
    if name == "haar":
        return HaarDetector()
    if name == "anime-cascade":
        return AnimeCascadeDetector()
    if name == "anime":
        return AnimeYoloDetector(_model_file("anime-face", ANIME_FILE, model_dir))
    raise UsageError(f"unknown face detector '{name}'", hint=f"choose one of: {', '.join(DETECTOR_NAMES)}")


def detector_from_name(name: str, reporter: Reporter = SILENT, *, model_dir: Path | None = None) -> FaceDetector:
    """The detector called `name`; `auto` merges every one available and says which.

    An explicitly named detector whose model is missing raises `ModelNotAvailable` (with the
    `loraprep models pull` hint) instead of silently running a weaker one. `auto` needs no
    download: YuNet (photos) and the anime cascade (drawn faces) ship with loraprep; deepghs' anime
    YOLO joins when pulled, libfacedetection when `yuface` is installed. OpenCV's Haar cascade
    stands in only when neither bundled detector loads.
    """
    if name != "auto":
        detector = _build(name, model_dir)
        reporter.note(f"face detector: {detector.name}")
        return detector
    chosen: list[FaceDetector] = []
    skipped: list[str] = []
    for candidate in AUTO_DETECTORS:
        try:
            chosen.append(_build(candidate, model_dir))
        except ModelNotAvailable as exc:
            skipped.append(f"{candidate} ({exc.message})")
    if not any(d.name in ("yunet", "anime-cascade") for d in chosen):
        chosen.append(_build("haar", model_dir))
    detector = chosen[0] if len(chosen) == 1 else CombinedDetector(chosen)
    why = f"; not available: {', '.join(skipped)}" if skipped else ""
    reporter.note(f"face detector (auto): {detector.name}{why}")
    return detector
