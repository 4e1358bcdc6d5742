"""Tiny real taggers for tests: a WD14-signature ONNX whose scores are a known function of its input,
and a random-weight BLIP saved with `save_pretrained` (tokenizer written offline).

The WD14 stand-in takes [N, S, S, 3] float32 (NHWC, dynamic batch) and returns [N, T] sigmoid
probabilities computed from per-channel means of three regions: the whole image, the top-left
16×16 corner and the top 16-pixel strip. Channel 0 is read as blue and channel 2 as red, and the
thresholds are in 0-255 units, so the tags an image gets prove the caller's preprocessing:
white padding/compositing (`white_background`, `letterboxed`), BGR order (`blue_theme`,
`red_theme`) and value range (`bright`). Fixed-score rows test thresholds, kaomoji and characters.

Import the fixtures into a test module: `from tagmodels import wd14_model  # noqa: F401`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

# (name, category, how the score is made): ("mean", channels-weights over the 9 features, bias) or ("const", p)
# Features: 0-2 B,G,R mean of the whole image; 3-5 B,G,R of the top-left corner; 6-8 B,G,R of the top strip.
_THIRD = 1 / 3
LABELS: list[tuple[str, int, tuple]] = [
    ("general", 9, ("linear", {0: _THIRD / 10, 1: _THIRD / 10, 2: _THIRD / 10}, -10.0)),   # mean > 100
    ("sensitive", 9, ("linear", {0: -_THIRD / 10, 1: -_THIRD / 10, 2: -_THIRD / 10}, 10.0)),  # mean < 100
    ("questionable", 9, ("const", 0.01)),
    ("explicit", 9, ("const", 0.001)),
    ("white_background", 0, ("linear", {3: _THIRD, 4: _THIRD, 5: _THIRD}, -250.0)),  # corner ≈ 255
    ("letterboxed", 0, ("linear", {6: _THIRD, 7: _THIRD, 8: _THIRD}, -250.0)),       # top strip ≈ 255
    ("blue_theme", 0, ("linear", {0: 0.2, 2: -0.2}, 0.0)),                             # B > R
    ("red_theme", 0, ("linear", {0: -0.2, 2: 0.2}, 0.0)),                              # R > B
    ("bright", 0, ("linear", {0: _THIRD / 10, 1: _THIRD / 10, 2: _THIRD / 10}, -12.8)),  # mean > 128
    ("^_^", 0, ("const", 0.9)),
    ("long_hair", 0, ("const", 0.6)),
    ("middling", 0, ("const", 0.5)),
    ("cat_ears", 0, ("const", 0.45)),
    ("looking_at_viewer", 0, ("const", 0.7)),
    ("hatsune_miku", 4, ("const", 0.9)),
    ("kafuu_chino", 4, ("const", 0.8)),
]
CORNER = 16


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def write_selected_tags(path: Path, labels: list[tuple[str, int, tuple]] = LABELS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(labels):
            writer.writerow([1000 + i, name, category, 100 - i])


def _weights(labels: list[tuple[str, int, tuple]]) -> tuple[np.ndarray, np.ndarray]:
    weight = np.zeros((9, len(labels)), np.float32)
    bias = np.zeros(len(labels), np.float32)
    for j, (_, _, rule) in enumerate(labels):
        if rule[0] == "const":
            bias[j] = _logit(rule[1])
        else:
            for i, w in rule[1].items():
                weight[i, j] = w
            bias[j] = rule[2]
    return weight, bias


def build_wd14_model(folder: Path, *, size: int = 448, labels: list[tuple[str, int, tuple]] = LABELS,
                     batch: int | str = "N", layout: str = "NHWC", csv_rows: int | None = None) -> Path:
    """Write model.onnx + selected_tags.csv into `folder`; `csv_rows` truncates the CSV (mismatch tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight, bias = (a.astype(np.float64) for a in _weights(labels))
    shape = [batch, size, size, 3] if layout == "NHWC" else [batch, 3, size, size]
    spatial = [1, 2] if layout == "NHWC" else [2, 3]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, len(labels)])

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name))

    nodes = [
        const("zeros", [0, 0]), const("corner_end", [CORNER, CORNER]), const("strip_end", [CORNER, size]),
        const("hw", spatial),
        # float64 inside, so batch 1 and batch 8 sum in different orders yet agree to the last digit kept
        helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.DOUBLE),
        helper.make_node("ReduceMean", ["pixels"], ["all"], axes=spatial, keepdims=0),
        helper.make_node("Slice", ["pixels", "zeros", "corner_end", "hw"], ["corner_px"]),
        helper.make_node("ReduceMean", ["corner_px"], ["corner"], axes=spatial, keepdims=0),
        helper.make_node("Slice", ["pixels", "zeros", "strip_end", "hw"], ["strip_px"]),
        helper.make_node("ReduceMean", ["strip_px"], ["strip"], axes=spatial, keepdims=0),
        helper.make_node("Concat", ["all", "corner", "strip"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Cast", ["probs"], ["output"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "wd14_stand_in", [x], [y],
                              initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    write_selected_tags(folder / "selected_tags.csv", labels[:csv_rows] if csv_rows is not None else labels)
    return folder


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "girl", "with", "hair", "the",
              "photo", "of", "cat", "on", "blue", "red", "sky", "sitting", "smiling", "rocket", "cup"]


def build_tiny_blip(folder: Path) -> Path:
    """A seeded random BlipForConditionalGeneration + BlipProcessor (BERT tokenizer from a 22-word vocab)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(BLIP_WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    dec, sep = BLIP_WORDS.index("[DEC]"), BLIP_WORDS.index("[SEP]")
    config = BlipConfig(
        text_config=dict(vocab_size=len(BLIP_WORDS), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=dec, eos_token_id=sep, pad_token_id=0, sep_token_id=sep),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=32),
        projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def wd14_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with the WD14 stand-in at 448 px (model.onnx + selected_tags.csv)."""
    return build_wd14_model(tmp_path_factory.mktemp("wd14") / "wd-stand-in")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")
