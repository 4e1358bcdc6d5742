"""WD14 tagger (SmilingWolf's Danbooru taggers) on onnxruntime, with the reference preprocessing.

The models were trained on images padded to a white square, resized with PIL's bicubic filter,
fed as float32 0-255 BGR in NHWC layout; any other preprocessing silently lowers tag quality,
so `preprocess` does exactly that and nothing else. Labels and their categories come from the
model's `selected_tags.csv` (9 rating, 0 general, 4 character).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from prep.errors import ModelMismatch
from prep.images import WHITE, flatten_alpha
from prep.records import Tags
from prep.tags import mcut_threshold, normalise_tag

MODEL_FILE = "model.onnx"
LABELS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
MCUT_CHARACTER_FLOOR = 0.15
# Accelerated providers worth using when this onnxruntime build has them, best first.
GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")


@dataclass(frozen=True)
class Thresholds:
    """Separate cut-offs: character tags need far more confidence than general ones."""

    general: float = 0.35
    character: float = 0.85
    mcut: bool = False  # per-image Maximum Cut instead of the fixed general/character numbers


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    rating: np.ndarray
    general: np.ndarray
    character: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def load_labels(path: Path) -> Labels:
    """Read `selected_tags.csv` (tag_id,name,category,count); ModelMismatch when absent or malformed."""
    if not path.is_file():
        raise ModelMismatch(f"{path.parent} has no {LABELS_FILE}; a WD14 model needs its label list",
                            hint=f"copy {LABELS_FILE} from the model's repository next to {MODEL_FILE}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        names = tuple(normalise_tag(row["name"]) for row in rows)
        categories = np.array([int(row["category"]) for row in rows])
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ModelMismatch(f"{path} is not a WD14 label list (need columns name and category): {exc}") from exc
    return Labels(names, np.flatnonzero(categories == RATING), np.flatnonzero(categories == GENERAL),
                  np.flatnonzero(categories == CHARACTER))


def pad_to_square(image: Image.Image, colour: tuple[int, int, int] = WHITE) -> Image.Image:
    """Centre the image on a square canvas of its longer side (the reference uses white)."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def square_rgb(image: Image.Image) -> Image.Image:
    """The size-independent half of `preprocess` (alpha onto white, RGB, padded square): decoding
    workers run it before the model has said which size it wants."""
    return pad_to_square(flatten_alpha(image, WHITE).convert("RGB"))


def resize_bgr(square: Image.Image, size: int) -> np.ndarray:
    """A padded square → [size, size, 3] float32 BGR 0-255 (PIL bicubic, as the models were trained)."""
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """RGB(A) image → [size, size, 3] float32 BGR 0-255, exactly as the WD14 models were trained."""
    return resize_bgr(square_rgb(image), size)


def choose_providers(available: Sequence[str]) -> list[str]:
    """The first accelerated provider this onnxruntime has, then CPU as the fallback."""
    chosen = [p for p in GPU_PROVIDERS if p in available][:1]
    return chosen + ["CPUExecutionProvider"]


def scores_to_tags(probs: np.ndarray, labels: Labels, thresholds: Thresholds) -> Tags:
    """One image's probabilities → Tags (general and character above threshold, best rating)."""
    general_cut, character_cut = thresholds.general, thresholds.character
    if thresholds.mcut:
        general_cut = mcut_threshold(probs[labels.general]) if len(labels.general) else 1.0
        character_cut = max(MCUT_CHARACTER_FLOOR, mcut_threshold(probs[labels.character])) if len(labels.character) else 1.0

    def above(indices: np.ndarray, cut: float) -> dict[str, float]:
        picked = indices[probs[indices] > cut]
        picked = picked[np.argsort(-probs[picked], kind="stable")]
        names = labels.names
        return dict(zip([names[i] for i in picked.tolist()], probs[picked].astype(float).tolist()))

    rating = labels.names[labels.rating[int(np.argmax(probs[labels.rating]))]] if len(labels.rating) else None
    return Tags(general=above(labels.general, general_cut), character=above(labels.character, character_cut),
                rating=rating)


class Scorer(Protocol):
    """What runs the network: [N, S, S, 3] float32 BGR 0-255 → [N, T] probabilities."""

    provider: str
    input_size: int
    fixed_batch: int | None
    on_cpu: bool

    def probabilities(self, batch: np.ndarray) -> np.ndarray: ...

    def output_count(self) -> int | None: ...


class Wd14Tagger:
    """A loaded WD14 model: checks its labels against its outputs once, then tags preprocessed batches.

    The network runs on onnxruntime (`OnnxScorer`, model.onnx) or on torch through timm
    (`prep.tagging.wd_timm.TimmScorer`, config.json + model.safetensors); both take the same arrays.
    """

    def __init__(self, model_dir: Path, *, name: str | None = None, thresholds: Thresholds = Thresholds(),
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 scorer: Scorer | None = None, labels: Labels | None = None, labels_file: str = LABELS_FILE,
                 square: Callable[[Image.Image], Image.Image] | None = None,
                 to_array: Callable[[Image.Image, int], np.ndarray] | None = None) -> None:
        # labels/labels_file/square/to_array: another tagger with this one's contract (DeepDanbooru)
        self.name = name or model_dir.name
        self.thresholds = thresholds
        self.labels_file = labels_file
        self.labels = labels if labels is not None else load_labels(model_dir / LABELS_FILE)
        self.square, self.to_array = square or square_rgb, to_array or resize_bgr
        self.scorer: Scorer = scorer or OnnxScorer(model_dir, providers, threads)
        self.provider = self.scorer.provider
        self.input_size, self.fixed_batch = self.scorer.input_size, self.scorer.fixed_batch
        self._check_output(model_dir)

    def _check_output(self, model_dir: Path) -> None:
        """The model's output count must match the label list. Read from the graph when it is
        static (no inference: a blank run costs as much as tagging one image); otherwise one blank
        image proves it before any real image is read."""
        count = self.scorer.output_count()
        if count is None:
            try:
                scores = self.probabilities(np.full((1, self.input_size, self.input_size, 3), 255, np.float32))
            except Exception as exc:  # onnxruntime's errors are untyped
                raise ModelMismatch(f"{model_dir}: the model fails on a blank image: {exc}") from exc
            count = scores.shape[-1] if scores.ndim == 2 else -1
        if count != len(self.labels):
            raise ModelMismatch(
                f"{model_dir}: the model outputs {count} scores but {self.labels_file} lists {len(self.labels)} tags",
                hint=f"the model and {self.labels_file} must come from the same model revision")

    @property
    def on_cpu(self) -> bool:
        return self.scorer.on_cpu

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.to_array(self.square(image), self.input_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.scorer.probabilities(batch)

    def predict(self, batch: np.ndarray) -> list[Tags]:
        return [scores_to_tags(row, self.labels, self.thresholds) for row in self.probabilities(batch)]


class OnnxScorer:
    """model.onnx on onnxruntime, on the best execution provider this build has (or those given)."""

    def __init__(self, model_dir: Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 model_file: str = MODEL_FILE) -> None:
        self.session = _open_session(model_dir / model_file, providers, threads)
        self.provider = self.session.get_providers()[0]
        self.input_name, self.input_size, self.fixed_batch = _check_input(self.session, model_dir)

    @property
    def on_cpu(self) -> bool:
        return self.provider == "CPUExecutionProvider"

    def output_count(self) -> int | None:
        outputs = self.session.get_outputs()
        shape = list(outputs[0].shape) if len(outputs) == 1 else []
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] → [N, T]; pads to the model's batch when it is fixed."""
        count = len(batch)
        if self.fixed_batch is not None and count != self.fixed_batch:
            if count > self.fixed_batch:
                return np.concatenate([self.probabilities(batch[i:i + self.fixed_batch])
                                       for i in range(0, count, self.fixed_batch)])
            pad = np.zeros((self.fixed_batch - count, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0][:count]


def _open_session(path: Path, providers: Sequence[str] | None, threads: int | None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelMismatch(f"{path.parent} has no {MODEL_FILE}",
                            hint="a WD14 model folder holds model.onnx and selected_tags.csv")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    chosen = list(providers) if providers else choose_providers(ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        raise ModelMismatch(f"{path} cannot be loaded by onnxruntime: {exc}",
                            hint="re-download it with `loraprep models pull NAME`") from exc


def _check_input(session: Any, model_dir: Path) -> tuple[str, int, int | None]:
    """(input name, square size, fixed batch or None); ModelMismatch for anything but [N, S, S, 3] float."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelMismatch(f"{model_dir}: a WD14 model has one input, this one has {len(inputs)}")
    spec = inputs[0]
    shape = list(spec.shape)
    layout_ok = (len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2]
                 and spec.type == "tensor(float)")
    if not layout_ok:
        raise ModelMismatch(
            f"{model_dir}: unexpected input {spec.name} {shape} {spec.type}; WD14 models take "
            f"[batch, size, size, 3] float32 (NHWC, BGR)",
            hint="pass a WD14 tagger (model.onnx + selected_tags.csv), e.g. `loraprep models pull wd-swinv2-tagger-v3`")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return spec.name, int(shape[1]), batch
