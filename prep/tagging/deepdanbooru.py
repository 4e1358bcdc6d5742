"""DeepDanbooru (KichangKim's tagger) from a local project folder, on onnxruntime.

A DeepDanbooru project folder holds the network and `tags.txt`, one tag per line in the order of
the network's outputs; the v3/v4 releases add `tags-general.txt` and `tags-character.txt` (the same
tags split by category) and end `tags.txt` with the system tags `rating:safe`, `rating:questionable`
and `rating:explicit`. The releases ship Keras weights; loraprep runs the network on onnxruntime, so
it must be converted to ONNX first (e.g. with tf2onnx) and saved in the folder as `model.onnx` (or
as the folder's only `.onnx` file). Nothing is on the hub at a pinned revision, so there is no
`models pull` for it: `tag --model deepdanbooru --model-dir FOLDER`.

Categories: `rating:*` tags are the rating (the best one is kept, without its prefix); tags listed
in `tags-character.txt` are characters; the rest are general, except that when `tags-general.txt`
is present a tag in neither list (a copyright or artist tag) is left out, as WD14 leaves out its
other categories. The same thresholds and pruning rules as WD14 then apply (prep.tagging.wd14).

Preprocessing is the project's own `evaluate`: the image is scaled to fit S×S keeping its aspect
ratio (area averaging), centred and padded by repeating its edge pixels, and fed as float32 RGB in
[0, 1], NHWC (S = 512 for the released models; read from the graph). Outputs are sigmoid
probabilities. (DeepDanbooru centres with sub-pixel bilinear warping; here the offset is rounded
to whole pixels, a difference of at most half a pixel in the padding.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from prep.errors import ModelMismatch, ModelNotAvailable
from prep.images import WHITE, flatten_alpha
from prep.tags import normalise_tag
from prep.tagging.wd14 import MODEL_FILE, Labels, OnnxScorer, Thresholds, Wd14Tagger

NAME = "deepdanbooru"
TAGS_FILE = "tags.txt"
GENERAL_FILE = "tags-general.txt"
CHARACTER_FILE = "tags-character.txt"
RATING_PREFIX = "rating:"
FOLDER_HINT = (f"a DeepDanbooru folder holds the network converted to ONNX ({MODEL_FILE}, or one .onnx file) "
               f"and the project's {TAGS_FILE} (optional {GENERAL_FILE}, {CHARACTER_FILE})")


def is_project(folder: Path) -> bool:
    """A folder laid out as a DeepDanbooru project (tags.txt, no WD14 selected_tags.csv)."""
    return (folder / TAGS_FILE).is_file() and not (folder / "selected_tags.csv").is_file()


def model_file(folder: Path) -> str:
    """The ONNX file in `folder`: model.onnx, else the only `*.onnx`; ModelNotAvailable otherwise."""
    if (folder / MODEL_FILE).is_file():
        return MODEL_FILE
    found = sorted(p.name for p in folder.glob("*.onnx") if p.is_file())
    if len(found) == 1:
        return found[0]
    what = f"{len(found)} .onnx files ({', '.join(found)})" if found else "no .onnx file"
    raise ModelNotAvailable(f"{folder} holds {what}; DeepDanbooru runs from an ONNX conversion of its network",
                            hint=f"convert the project's .h5 with tf2onnx and save it as {folder / MODEL_FILE}")


def _tag_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelMismatch(f"cannot read {path}: {exc}", hint=FOLDER_HINT) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_tags(folder: Path) -> Labels:
    """tags.txt (output order) with categories from the optional per-category lists (module docstring)."""
    if not (folder / TAGS_FILE).is_file():
        raise ModelNotAvailable(f"{folder} has no {TAGS_FILE}", hint=FOLDER_HINT)
    raw = _tag_lines(folder / TAGS_FILE)
    characters = set(_tag_lines(folder / CHARACTER_FILE)) if (folder / CHARACTER_FILE).is_file() else set()
    general = set(_tag_lines(folder / GENERAL_FILE)) if (folder / GENERAL_FILE).is_file() else None
    rating, general_at, character_at = [], [], []
    names = []
    for index, tag in enumerate(raw):
        if tag.startswith(RATING_PREFIX):
            rating.append(index)
            names.append(tag.removeprefix(RATING_PREFIX))
            continue
        names.append(normalise_tag(tag))
        if tag in characters:
            character_at.append(index)
        elif general is None or tag in general:
            general_at.append(index)
    return Labels(tuple(names), np.array(rating, np.int64), np.array(general_at, np.int64),
                  np.array(character_at, np.int64))


def rgb(image: Image.Image) -> Image.Image:
    """The size-independent half of `preprocess` (alpha onto white, RGB), for the decoding workers."""
    return flatten_alpha(image, WHITE).convert("RGB")


def fit_pad_rgb(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image → [size, size, 3] float32 RGB 0-1: scaled to fit (area), edge-padded, centred."""
    width, height = image.size
    scale = min(size / width, size / height)
    fitted = (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32)
    left, top = (size - fitted[0]) // 2, (size - fitted[1]) // 2
    pad = ((top, size - fitted[1] - top), (left, size - fitted[0] - left), (0, 0))
    return np.pad(pixels, pad, mode="edge") * np.float32(1 / 255)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    return fit_pad_rgb(rgb(image), size)


def open_tagger(folder: Path, *, name: str = NAME, thresholds: Thresholds = Thresholds(),
                providers: Sequence[str] | None = None, threads: int | None = None) -> Wd14Tagger:
    """The project in `folder` as a tagger: the WD14 tagger's thresholds and checks, this model's
    labels and its ONNX file."""
    labels = load_tags(folder)
    scorer = OnnxScorer(folder, providers, threads, model_file=model_file(folder))
    return Wd14Tagger(folder, name=name, thresholds=thresholds, scorer=scorer, labels=labels, labels_file=TAGS_FILE,
                      square=rgb, to_array=fit_pad_rgb)
