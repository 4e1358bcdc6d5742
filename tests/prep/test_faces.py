"""Face detector backends on the real test images, and how a backend is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prep.errors import ModelNotAvailable, UsageError
from prep.faces import CombinedDetector, HaarDetector, LibFaceDetectionDetector, YuNetDetector, detector_from_name
from prep.images import open_image
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


def notes_of(events: list[ProgressEvent]) -> str:
    return "\n".join(e.message for e in events if e.kind == "note")


def test_auto_prefers_yunet_when_its_model_is_there_and_says_so(yunet_model):
    events: list[ProgressEvent] = []
    detector = detector_from_name("auto", Reporter(events.append), model_dir=yunet_model.parent)
    assert detector.name == "yunet"
    assert "face detector (auto): yunet" in notes_of(events)


def test_auto_falls_back_to_an_offline_detector_and_names_what_was_missing():
    events: list[ProgressEvent] = []
    detector = detector_from_name("auto", Reporter(events.append))
    assert detector.name in ("libfacedetection", "haar")
    assert f"(auto): {detector.name}" in notes_of(events) and "yunet" in notes_of(events)


@pytest.mark.parametrize("name", ["yunet", "anime"])
def test_named_detector_without_its_model_refuses_with_the_pull_hint(name):
    with pytest.raises(ModelNotAvailable) as error:
        detector_from_name(name)
    assert "loraprep models pull" in error.value.hint


def test_unknown_detector_name_is_a_usage_error():
    with pytest.raises(UsageError):
        detector_from_name("retinaface")
