"""Face detector backends on the real test images, and how a backend is chosen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from prep.errors import ModelNotAvailable, UsageError
from prep import faces
from prep.faces import (AnimeCascadeDetector, AnimeYoloDetector, CombinedDetector, HaarDetector,
                        LibFaceDetectionDetector, YuNetDetector, cascade_score, detector_from_name, merge_boxes)
from prep.images import open_image
from prep.masks import OnnxSegmenter, SegmenterInput
from prep.progress import ProgressEvent, Reporter

WITH_FACES = ["photos/astronaut.png", "photos/camera.png", "anime/sylvie_blue_normal.png",
              "anime/sylvie_blue_smile.png", "anime/lucy_happy.png"]
WITHOUT_FACES = ["photos/chelsea.png", "photos/coffee.png", "anime/bg_meadow.jpg"]


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def pixels(testdata: Path, name: str) -> np.ndarray:
    return np.asarray(open_image(testdata / name, flatten=(255, 255, 255)))


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


@pytest.mark.parametrize("name", WITH_FACES)
def test_yunet_finds_the_hand_checked_faces(yunet, testdata, faces_truth, name):
    found = yunet(pixels(testdata, name))
    for truth in faces_truth[name]:
        assert max(iou(f.box, truth) for f in found) > 0.7


@pytest.mark.parametrize("name", WITHOUT_FACES)
def test_yunet_finds_no_face_where_there_is_none(yunet, testdata, name):
    assert yunet(pixels(testdata, name)) == []


def test_yunet_scores_are_probabilities_and_boxes_stay_inside_the_image(yunet, testdata):
    image = pixels(testdata, "anime/concert1.jpg")
    faces = yunet(image)
    assert faces and all(0 < f.score <= 1 and f.detector == "yunet" for f in faces)
    assert all(0 <= f.box[0] < f.box[2] <= image.shape[1] and 0 <= f.box[1] < f.box[3] <= image.shape[0] for f in faces)


def test_libfacedetection_finds_the_astronaut_offline(testdata, faces_truth):
    pytest.importorskip("yuface", reason="yuface wheels exist for x86_64 Linux/Windows only")
    found = LibFaceDetectionDetector()(pixels(testdata, "photos/astronaut.png"))
    assert max(iou(f.box, faces_truth["photos/astronaut.png"][0]) for f in found) > 0.7


def test_haar_cascade_finds_a_frontal_photo_face(testdata, faces_truth):
    found = HaarDetector()(pixels(testdata, "photos/astronaut.png"))
    assert max(iou(f.box, faces_truth["photos/astronaut.png"][0]) for f in found) > 0.5


def test_combined_detector_reports_overlapping_boxes_once(yunet, testdata):
    image = pixels(testdata, "photos/astronaut.png")
    assert len(CombinedDetector([yunet, yunet])(image)) == len(yunet(image)) == 1


@pytest.mark.parametrize("name", ["anime/sylvie_blue_normal.png", "anime/sylvie_blue_smile.png",
                                  "anime/lucy_happy.png", "anime/eileen_happy.png"])
def test_anime_cascade_frames_the_hand_checked_drawn_faces(anime_cascade, testdata, faces_truth, name):
    found = AnimeCascadeDetector(anime_cascade)(pixels(testdata, name))
    (truth,) = faces_truth[name]
    assert any(iou(f.box, truth) > 0.3 and f.detector == "anime-cascade" and 0.5 <= f.score < 1 for f in found)


@pytest.mark.parametrize("name", WITHOUT_FACES + ["photos/rocket.jpg", "anime/panorama.jpg"])
def test_anime_cascade_finds_nothing_in_pictures_without_faces(anime_cascade, testdata, name):
    from prep.faces import detect_faces

    assert detect_faces(open_image(testdata / name), AnimeCascadeDetector(anime_cascade), 640)[0] == []


@pytest.mark.parametrize(("neighbours", "score"), [(5, 0.5), (20, 0.8), (45, 0.9)])
def test_cascade_scores_grow_with_agreeing_windows_towards_one(neighbours, score):
    assert cascade_score(np.array([neighbours], float))[0] == pytest.approx(score)


def test_merged_faces_keep_the_first_detectors_box_and_the_best_score():
    boxes = np.array([[100, 100, 200, 220], [80, 80, 230, 240], [300, 40, 340, 90], [90, 95, 205, 215]], float)
    # 0: a network's tight box; 1: the cascade's wider box of the same face (IoU 0.5); 2: another
    # face; 3: a nested duplicate of 0 from a third detector
    groups = merge_boxes(boxes, [0, 2, 3, 1], iou_threshold=0.6, nested=0.7)
    assert groups == [(0, [0, 3, 1]), (2, [2])]


def test_combined_detector_merges_yunet_and_the_cascade_on_a_group_scene(yunet, anime_cascade, testdata, faces_truth):
    from prep.faces import detect_faces

    merged, _, _ = detect_faces(open_image(testdata / "anime/concert1.jpg"),
                                CombinedDetector([yunet, AnimeCascadeDetector(anime_cascade)]), 640)
    for truth in faces_truth["anime/concert1.jpg"]:
        (same,) = [f for f in merged if iou(f.box, truth) > 0.3]
        assert same.detector == "yunet"  # the tight box wins, once per face


def notes_of(events: list[ProgressEvent]) -> str:
    return "\n".join(e.message for e in events if e.kind == "note")


def test_auto_needs_no_download_and_says_what_it_merged():
    events: list[ProgressEvent] = []
    detector = detector_from_name("auto", Reporter(events.append))
    expected = ["yunet", "anime-cascade"] + (["libfacedetection"] if importlib.util.find_spec("yuface") else [])
    assert detector.name == "+".join(expected)
    assert f"face detector (auto): {detector.name}" in notes_of(events)


def test_auto_takes_a_pulled_anime_model_too_and_names_what_it_did_not_find(tmp_path, monkeypatch):
    cache = tmp_path / "models"
    (cache / "anime-face").mkdir(parents=True)
    monkeypatch.setenv("LORAPREP_MODELS", str(cache))
    events: list[ProgressEvent] = []
    assert detector_from_name("auto", Reporter(events.append)).name.startswith("yunet+anime-cascade")
    assert "not available: anime (" in notes_of(events)  # the folder is there, its model file is not


def test_auto_without_the_bundled_files_falls_back_to_haar_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "DATA", tmp_path)  # an install that lost prep/data/
    events: list[ProgressEvent] = []
    detector = detector_from_name("auto", Reporter(events.append))
    assert detector.name.split("+")[-1] == "haar" and "yunet" not in detector.name
    assert "not available: yunet" in notes_of(events) and "anime-cascade" in notes_of(events)


def test_a_pulled_yunet_in_the_model_cache_is_used_before_the_bundled_copy(yunet_model, tmp_path, monkeypatch):
    cache = tmp_path / "models"
    (cache / "yunet").mkdir(parents=True)
    (cache / "yunet" / "face_detection_yunet.onnx").symlink_to(yunet_model)
    monkeypatch.setenv("LORAPREP_MODELS", str(cache))
    assert faces.yunet_file() == cache / "yunet" / "face_detection_yunet.onnx"
    assert detector_from_name("yunet").model_path == cache / "yunet" / "face_detection_yunet.onnx"


def test_named_detector_without_its_model_refuses_with_the_pull_hint(tmp_path):
    with pytest.raises(ModelNotAvailable) as error:
        detector_from_name("anime")
    assert "loraprep models pull anime-face" in error.value.hint
    with pytest.raises(ModelNotAvailable) as error:
        detector_from_name("yunet", model_dir=tmp_path)  # an explicit folder is never second-guessed
    assert "loraprep models pull yunet" in error.value.hint


def test_unknown_detector_name_is_a_usage_error():
    with pytest.raises(UsageError):
        detector_from_name("retinaface")


# ---- YuNet on onnxruntime: the same faces as OpenCV's FaceDetectorYN

@pytest.mark.parametrize("name", WITH_FACES + WITHOUT_FACES + ["anime/concert1.jpg", "anime/eileen_happy.png"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.23])
def test_yunet_rows_match_opencvs_face_detector_yn(yunet, yunet_model, testdata, name, scale):
    import cv2

    image = pixels(testdata, name)
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    reference = cv2.FaceDetectorYN.create(str(yunet_model), "", (image.shape[1], image.shape[0]), 0.6, 0.3, 5000)
    _, expected = reference.detect(np.ascontiguousarray(image[:, :, ::-1]))
    expected = np.zeros((0, 15), np.float32) if expected is None else expected
    ours = yunet.raw(image)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=0.01)


def test_yunet_input_is_bgr_padded_to_multiples_of_32():
    from prep.faces import yunet_input

    image = np.zeros((33, 40, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    tensor = yunet_input(image)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32
    assert tensor[0, :, 0, 0].tolist() == [30, 20, 10]
    assert not tensor[0, :, 33:, :].any() and not tensor[0, :, :, 40:].any()


def test_decode_yunet_places_boxes_and_landmarks_on_the_stride_grid_and_suppresses_overlaps():
    from prep.faces import decode_yunet

    padded = (64, 64)
    outputs = {}
    for stride in (8, 16, 32):
        cells = (64 // stride) ** 2
        outputs[f"cls_{stride}"] = np.zeros((1, cells, 1), np.float32)
        outputs[f"obj_{stride}"] = np.zeros((1, cells, 1), np.float32)
        outputs[f"bbox_{stride}"] = np.zeros((1, cells, 4), np.float32)
        outputs[f"kps_{stride}"] = np.zeros((1, cells, 10), np.float32)
    # stride 16, row 1, column 2 (cell 1*4+2): centre (2.5, 1.5)*16, size e^1*16, score √(0.81*1.2→1) = 0.9
    outputs["cls_16"][0, 6, 0], outputs["obj_16"][0, 6, 0] = 0.81, 1.2
    outputs["bbox_16"][0, 6] = [0.5, 0.5, 1.0, 1.0]
    outputs["kps_16"][0, 6] = np.arange(10) / 10
    # stride 8, a weaker box on the same spot (suppressed) and one below the threshold (dropped)
    outputs["cls_8"][0, 2 * 8 + 5, 0], outputs["obj_8"][0, 2 * 8 + 5, 0] = 0.7, 0.7
    outputs["bbox_8"][0, 2 * 8 + 5] = [0.0, 1.0, np.log(5.4), np.log(5.4)]
    outputs["cls_8"][0, 0, 0], outputs["obj_8"][0, 0, 0] = 0.5, 0.5
    rows = decode_yunet(outputs, padded, score_threshold=0.6, nms_threshold=0.3)
    assert rows.shape == (1, 15)
    size = np.e * 16
    np.testing.assert_allclose(rows[0, :4], [40 - size / 2, 24 - size / 2, size, size], rtol=1e-5)
    np.testing.assert_allclose(rows[0, 4:14], (np.arange(10) / 10 + np.tile([2, 1], 5)) * 16, rtol=1e-5)
    assert rows[0, 14] == pytest.approx(0.9)
    assert decode_yunet(outputs, padded, score_threshold=0.95, nms_threshold=0.3).shape == (0, 15)


@pytest.mark.parametrize(("build", "pull"), [(YuNetDetector, "yunet"), (AnimeYoloDetector, "anime-face"),
                                            (lambda path: OnnxSegmenter(path, SegmenterInput(64, letterbox=True), name="anime-seg"),
                                             "anime-seg")])
def test_an_unreadable_model_file_is_a_named_model_error(tmp_path, build, pull):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(ModelNotAvailable, match="could not be loaded") as caught:
        build(broken)
    assert f"models pull {pull}" in caught.value.hint
    with pytest.raises(ModelNotAvailable, match="does not exist") as caught:
        build(tmp_path / "missing.onnx")
    assert f"models pull {pull}" in caught.value.hint


# ---- libfacedetection under worker threads (issue 14: `crop --workers 2` hung 1 run in 4-7)

FIRST_CALL_RACE = r"""
import os, signal, sys, time
from pathlib import Path
from PIL import Image
from prep.crop import CropOptions, crop_folder
import yuface.yuface  # the module is loaded, its one-time initialisation is left to each child

data, tmp, runs, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
src = tmp / "src"
src.mkdir()
for name in ("photos/astronaut.png", "photos/camera.png", "anime/lucy_happy.png", "photos/coffee.png"):
    image = Image.open(data / name)
    image.thumbnail((256, 256))
    image.save(src / Path(name).name)
for run in range(runs):  # a fresh process per run (forked: no re-import), as each CLI run is
    pid = os.fork()
    if pid == 0:
        try:
            result = crop_folder(src, tmp / f"out{run}", CropOptions(detector="libfacedetection", workers=2))
            os._exit(0 if len(result.done) == 4 else 3)
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + limit
    while not (finished := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit(f"run {run + 1} of {runs} hung for {limit:.0f} s")
        time.sleep(0.01)
    if finished[1] != 0:
        sys.exit(f"run {run + 1} of {runs} failed with wait status {finished[1]}")
print("all runs finished")
"""


def test_libfacedetection_crop_on_two_workers_never_deadlocks(testdata, tmp_path):
    """24 fresh processes each crop 4 images on 2 workers: a 1-in-7 hang escapes all 24 only 2.5%
    of the time (it hung 8 of 30 before the fix). Each run is killed after 30 s."""
    pytest.importorskip("yuface", reason="yuface wheels exist for x86_64 Linux/Windows only")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FIRST_CALL_RACE, str(testdata), str(tmp_path), "24", "30"],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all runs finished" in done.stdout


def test_a_missing_anime_cascade_says_where_to_get_it_and_where_to_put_it(tmp_path):
    with pytest.raises(ModelNotAvailable) as caught:
        AnimeCascadeDetector(tmp_path / "anime-cascade" / faces.ANIME_CASCADE_FILE)
    assert faces.ANIME_CASCADE_URL in caught.value.hint and str(tmp_path / "anime-cascade") in caught.value.hint


def test_auto_uses_an_anime_cascade_dropped_into_the_model_cache(anime_cascade, monkeypatch, tmp_path):
    import shutil

    monkeypatch.setattr(faces, "DATA", tmp_path / "no-bundle")
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "cache"))
    (tmp_path / "cache" / "anime-cascade").mkdir(parents=True)
    shutil.copy(anime_cascade, tmp_path / "cache" / "anime-cascade" / faces.ANIME_CASCADE_FILE)
    detector = faces.detector_from_name("auto")
    assert "anime-cascade" in detector.name
