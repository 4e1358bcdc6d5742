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


# ---------------------------------------------------------------- WD v3 as timm models (timm backend)

# Each v3 repository's timm architecture and the arguments its config.json gives (`model_args`),
# with widths and depths shrunk (`tiny`) so a random model builds and exports in a second.
TIMM_V3: dict[str, tuple[str, dict, dict]] = {
    "vit": ("vit_base_patch16_224",
            dict(img_size=448, class_token=False, global_pool="avg", fc_norm=False, act_layer="gelu_tanh"),
            dict(embed_dim=32, depth=2, num_heads=2)),
    "swinv2": ("swinv2_base_window8_256", dict(img_size=448, window_size=14),
               dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))),
    "convnext": ("convnext_base", dict(), dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))),
    "eva02": ("eva02_large_patch14_448", dict(img_size=448),
              dict(embed_dim=32, depth=2, num_heads=2)),
}


def build_timm_tagger(folder: Path, kind: str, *, labels: list[tuple[str, int, tuple]] = LABELS,
                      onnx: bool = True, full_size: bool = False) -> Path:
    """A seeded random timm model of a WD v3 architecture as its repository ships it (config.json,
    model.safetensors, selected_tags.csv) and, with `onnx`, the same network exported as model.onnx
    with the WD14 signature (NHWC BGR 0-255 in, sigmoid probabilities out; normalised by 0.5/0.5
    inside the graph, as the published ONNX files are). `full_size`: the repository's own widths
    and depths instead of the tiny ones (bench/tag.py --gpu)."""
    import json

    import torch
    from safetensors.torch import save_file

    from prep.tagging.wd_timm import import_timm

    timm = import_timm()
    architecture, model_args, tiny = TIMM_V3[kind]
    tiny = {} if full_size else tiny
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    network = timm.create_model(architecture, pretrained=False, num_classes=len(labels), **model_args, **tiny).eval()
    with torch.no_grad():  # timm initialises heads near zero (scores ≈ 0.5): spread them so thresholds matter
        head = network.get_classifier()
        head.weight.normal_(0, 3 / head.weight.shape[1] ** 0.5)
        head.bias.normal_(0, 1)
    config = {"architecture": architecture, "num_classes": len(labels),
              "num_features": network.num_features, "global_pool": "avg",
              "model_args": {**model_args, **{k: list(v) if isinstance(v, tuple) else v for k, v in tiny.items()}},
              "pretrained_cfg": {"custom_load": False, "input_size": [3, 448, 448], "fixed_input_size": kind != "convnext",
                                 "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": len(labels),
                                 "pool_size": None, "first_conv": None, "classifier": None}}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(folder / "model.safetensors"))
    write_selected_tags(folder / "selected_tags.csv", labels)
    if onnx:
        class AsPublished(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.network = network

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.sigmoid(self.network(x.permute(0, 3, 1, 2) / 127.5 - 1.0))

        with torch.no_grad():
            torch.onnx.export(AsPublished().eval(), (torch.zeros(1, 448, 448, 3),), str(folder / "model.onnx"),
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              opset_version=17, dynamo=False, external_data=False)
    return folder
