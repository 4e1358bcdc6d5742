"""Shared fixtures: the real test images (copied from ../shared/testdata) and the bundled detectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """tests/data: photos/ and anime/ (real, freely licensed images; see LICENSES.md there)."""
    return DATA


@pytest.fixture(scope="session")
def faces_truth() -> dict[str, list[list[int]]]:
    """Hand-checked face boxes [x0, y0, x1, y1] keyed by 'photos/astronaut.png' etc."""
    data = json.loads((DATA / "faces.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@pytest.fixture(scope="session")
def yunet_model() -> Path:
    """The YuNet ONNX file loraprep ships in prep/data/ (no download, never skipped)."""
    from prep.faces import DATA as BUNDLED
    from prep.faces import YUNET_FILE

    return BUNDLED / YUNET_FILE


@pytest.fixture(scope="session")
def anime_cascade() -> Path:
    """nagadomi's lbpcascade_animeface.xml as loraprep ships it in prep/data/ (no download, never skipped)."""
    from prep.faces import ANIME_CASCADE_FILE
    from prep.faces import DATA as BUNDLED

    return BUNDLED / ANIME_CASCADE_FILE


@pytest.fixture(autouse=True)
def _isolated_model_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's models_cache/: each session gets an empty one."""
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path_factory.getbasetemp() / "models_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def bad_corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of broken and awkward inputs (see tests/corpus.py) and what each must produce."""
    from corpus import build_corpus

    folder = tmp_path / "corpus"
    return folder, build_corpus(folder)
