"""The anime YOLOv8 detector's letterbox, decoding and NMS, on a constructed ONNX graph whose
output is known, and on the real deepghs model when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from prep.faces import AnimeYoloDetector, decode_yolov8, letterbox, nms, unletterbox

# A 320×160 image letterboxes into 640×640 at scale 2 with 160 px of padding above and below.
# Columns of the head output: centre-x, centre-y, w, h, score — in letterboxed pixels.
HEAD = np.array([
    [120, 240, 80, 80, 0.90],   # face at (40, 20)-(80, 60)
    [124, 242, 80, 80, 0.60],   # the same face again, weaker: NMS removes it
    [460, 380, 120, 120, 0.80],  # face at (200, 80)-(260, 140)
    [300, 300, 50, 50, 0.10],   # below the score threshold
    [600, 170, 80, 80, 0.50],   # reaches into the padding: clipped to (280, 0)-(320, 25)
    [0, 0, 0, 0, 0.0],
], dtype=np.float32).T[None]
EXPECTED = [((40, 20, 80, 60), 0.9), ((200, 80, 260, 140), 0.8), ((280, 0, 320, 25), 0.5)]


def constant_head_model(path: Path, head: np.ndarray) -> Path:
    """images (1,3,640,640) → output0 = head + 0·sum(images): a real graph with a known output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["head", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolov8-head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        initializer=[numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_detector_maps_known_head_output_back_to_image_pixels(tmp_path):
    detector = AnimeYoloDetector(constant_head_model(tmp_path / "head.onnx", HEAD))
    faces = detector(np.zeros((160, 320, 3), np.uint8))
    assert [(f.box, round(f.score, 2)) for f in faces] == EXPECTED
    assert {f.detector for f in faces} == {"anime"}


@pytest.mark.parametrize(("size", "scale", "pad"), [
    ((320, 160), 2.0, (0, 160)),
    ((160, 320), 2.0, (160, 0)),
    ((1280, 1280), 0.5, (0, 0)),
    ((1000, 250), 0.64, (0, 240)),
])
def test_letterbox_scales_and_centres(size, scale, pad):
    square, got_scale, got_pad = letterbox(np.full((size[1], size[0], 3), 7, np.uint8), 640)
    assert square.shape == (640, 640, 3)
    assert got_scale == pytest.approx(scale) and got_pad == pad
    assert square[pad[1] + 1, pad[0] + 1, 0] == 7 and (pad == (0, 0) or square[0, 0, 0] == 114)


def test_decode_keeps_scores_at_or_above_the_threshold_as_corner_boxes():
    boxes, scores, classes = decode_yolov8(HEAD, 0.5)
    assert scores.tolist() == pytest.approx([0.9, 0.6, 0.8, 0.5])
    assert boxes[0].tolist() == [80, 200, 160, 280] and set(classes.tolist()) == {0}


@pytest.mark.parametrize(("threshold", "kept"), [(0.5, [0, 2]), (0.7, [0, 1, 2]), (0.0, [0, 2])])
def test_nms_drops_weaker_boxes_overlapping_more_than_the_threshold(threshold, kept):
    # the first two boxes overlap with IoU 81/119 ≈ 0.68
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert sorted(nms(boxes, np.array([0.9, 0.8, 0.7]), threshold)) == kept


def test_unletterbox_clips_to_the_original_image():
    mapped = unletterbox(np.array([[-20, 100, 700, 300]]), 2.0, (0, 160), (320, 160))
    assert mapped.tolist() == [[0, 0, 320, 70]]


def test_real_anime_model_finds_the_sprite_faces(testdata, faces_truth):
    folder = os.environ.get("LORAPREP_TEST_MODELS")
    model = Path(folder or ".") / "anime_face_detection.onnx"
    if not folder or not model.is_file():
        pytest.skip("deepghs anime face model not available: put anime_face_detection.onnx in $LORAPREP_TEST_MODELS")
    from prep.images import open_image

    detector = AnimeYoloDetector(model)
    for name in ("anime/sylvie_blue_normal.png", "anime/eileen_happy.png", "anime/lucy_happy.png"):
        faces = detector(np.asarray(open_image(testdata / name, flatten=(255, 255, 255))))
        truth = faces_truth[name][0]
        assert any(f.box[0] < (truth[0] + truth[2]) / 2 < f.box[2] and f.box[1] < (truth[1] + truth[3]) / 2 < f.box[3]
                   for f in faces)
