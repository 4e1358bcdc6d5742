"""A tiny DeepDanbooru stand-in for tests: an ONNX graph with the converted models' signature
([N, 512, 512, 3] float32 RGB in [0, 1], NHWC, dynamic batch → [N, T] sigmoid probabilities) in a
project folder (tags.txt in output order, tags-general.txt, tags-character.txt).

Its scores are a known function of the input, so the tags an image gets prove the caller's
preprocessing: channel 0 is read as red (`red_theme`, `blue_theme`: RGB order), values as 0-1
(`bright`: mean above 0.45, always on for 0-255 input), and the top 16 rows' mean (`white_strip`:
on when the image was padded with white instead of its own edge pixels). Fixed-score rows test
thresholds, the character list, a tag in neither category list (`vocaloid`, left out) and the
`rating:*` system tags.

Import the fixture into a test module: `from ddmodels import deepdanbooru_model  # noqa: F401`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

STRIP = 16
# (tag as in tags.txt, list it is in: "general" / "character" / None, rule)
# rule: ("linear", {feature: weight}, bias) over the features R, G, B mean (0-2) and R, G, B mean of
# the top strip (3-5), or ("const", p).
_THIRD = 1 / 3
TAGS: list[tuple[str, str | None, tuple]] = [
    ("red_theme", "general", ("linear", {0: 20.0, 2: -20.0}, 0.0)),
    ("blue_theme", "general", ("linear", {0: -20.0, 2: 20.0}, 0.0)),
    ("bright", "general", ("linear", {0: 30 * _THIRD, 1: 30 * _THIRD, 2: 30 * _THIRD}, -13.5)),
    ("white_strip", "general", ("linear", {3: 40 * _THIRD, 4: 40 * _THIRD, 5: 40 * _THIRD}, -36.0)),
    ("long_hair", "general", ("const", 0.6)),
    ("middling", "general", ("const", 0.3)),
    ("hatsune_miku", "character", ("const", 0.9)),
    ("vocaloid", None, ("const", 0.95)),  # a copyright tag: in neither category list
    ("rating:safe", None, ("const", 0.8)),
    ("rating:questionable", None, ("const", 0.15)),
    ("rating:explicit", None, ("const", 0.05)),
]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def build_deepdanbooru_model(folder: Path, *, size: int = 512, onnx_name: str = "model.onnx",
                             tags: list[tuple[str, str | None, tuple]] = TAGS) -> Path:
    """Write the ONNX graph and the project's tag lists into `folder`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = np.zeros((6, len(tags)), np.float64)
    bias = np.zeros(len(tags), np.float64)
    for j, (_, _, rule) in enumerate(tags):
        if rule[0] == "const":
            bias[j] = _logit(rule[1])
        else:
            for i, w in rule[1].items():
                weight[i, j] = w
            bias[j] = rule[2]
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", size, size, 3])
    y = helper.make_tensor_value_info("activation", TensorProto.FLOAT, ["N", len(tags)])

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name))

    nodes = [
        const("zeros", [0, 0]), const("strip_end", [STRIP, size]), const("hw", [1, 2]),
        helper.make_node("Cast", ["input_1"], ["pixels"], to=TensorProto.DOUBLE),
        helper.make_node("ReduceMean", ["pixels"], ["all"], axes=[1, 2], keepdims=0),
        helper.make_node("Slice", ["pixels", "zeros", "strip_end", "hw"], ["strip_px"]),
        helper.make_node("ReduceMean", ["strip_px"], ["strip"], axes=[1, 2], keepdims=0),
        helper.make_node("Concat", ["all", "strip"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Cast", ["probs"], ["activation"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "deepdanbooru_stand_in", [x], [y],
                              initializer=[numpy_helper.from_array(weight, "weight"),
                                           numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / onnx_name)
    (folder / "tags.txt").write_text("".join(f"{tag}\n" for tag, _, _ in tags), encoding="utf-8")
    for kind in ("general", "character"):
        (folder / f"tags-{kind}.txt").write_text("".join(f"{tag}\n" for tag, listed, _ in tags if listed == kind),
                                                 encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def deepdanbooru_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepDanbooru project folder with the stand-in network as model.onnx."""
    return build_deepdanbooru_model(tmp_path_factory.mktemp("dd") / "deepdanbooru-v3-stand-in")
