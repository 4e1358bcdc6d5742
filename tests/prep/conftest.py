"""Fixtures for the prep tests: the tiny WD14-signature tagger and tiny BLIP, built once per session,
and small captioned datasets."""

from pathlib import Path

import pytest
from tagmodels import tiny_blip, wd14_model  # noqa: F401  (re-exported as fixtures)


@pytest.fixture()
def captioned_sprites(tmp_path, testdata) -> Path:
    """A dataset folder of two real sprites, each captioned `1girl, smile`."""
    import shutil

    root = tmp_path / "ds"
    root.mkdir()
    for name in ("eileen_happy.png", "lucy_happy.png"):
        shutil.copy(testdata / "anime" / name, root / name)
        (root / name).with_suffix(".txt").write_text("1girl, smile\n")
    return root


@pytest.fixture()
def models_with_yunet(yunet_model, tmp_path, monkeypatch) -> Path:
    """A model cache holding YuNet as `models pull yunet` leaves it (a link to the bundled file)."""
    cache = tmp_path / "models"
    (cache / "yunet").mkdir(parents=True)
    (cache / "yunet" / "face_detection_yunet.onnx").symlink_to(yunet_model)
    monkeypatch.setenv("LORAPREP_MODELS", str(cache))
    return cache
