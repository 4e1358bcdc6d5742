"""The detectors that ship inside the package: the files are the ones recorded in
prep/data/LICENSES.md, `models list` says they are bundled, and `models pull` of a model that only
ships with loraprep downloads nothing."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from cli import app
from prep import models
from prep.faces import ANIME_CASCADE_FILE, ANIME_CASCADE_URL, YUNET_FILE

runner = CliRunner()
LICENSES = models.BUNDLED_DIR / "LICENSES.md"


@pytest.mark.parametrize("name", [YUNET_FILE, ANIME_CASCADE_FILE])
def test_a_bundled_file_is_the_one_its_licence_entry_records(name):
    section = LICENSES.read_text(encoding="utf-8").split(f"## {name}")[1].split("\n## ")[0]
    recorded = re.search(r"sha256\s+`([0-9a-f]{64})`", section)
    assert recorded, f"no sha256 recorded for {name}"
    assert hashlib.sha256((models.BUNDLED_DIR / name).read_bytes()).hexdigest() == recorded.group(1)
    assert "MIT" in section


def test_the_bundled_cascade_keeps_its_licence_in_its_header():
    head = (models.BUNDLED_DIR / ANIME_CASCADE_FILE).read_text(encoding="utf-8")[:2000]
    assert "The MIT License (MIT)" in head and "nagadomi" in head


def test_models_list_shows_the_bundled_detectors_with_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "empty"))
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    for name in ("yunet", "anime-cascade"):
        assert rows[name]["bundled"] is True and rows[name]["available"] is True, name
    assert rows["anime-cascade"]["revision"] == "4433ab1ae1166ea75acfe99eb0f18709dac329a0"
    assert rows["anime-face"]["bundled"] is False and rows["anime-face"]["available"] is False
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    line = next(line for line in table.output.splitlines() if "anime-cascade" in line)
    assert "bundled" in line and "github.com/nagadomi/lbpcascade_animeface" in line


def test_pulling_a_bundled_github_model_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["models", "pull", "anime-cascade"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"anime-cascade → {models.BUNDLED_DIR}" in result.stdout
    assert not (tmp_path / "cache").exists()


def test_an_install_without_the_bundled_cascade_says_where_to_save_it(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "BUNDLED_DIR", tmp_path / "no-bundle")
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "cache"))
    result = runner.invoke(app, ["models", "pull", "anime-cascade"], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert ANIME_CASCADE_URL in text and str(tmp_path / "cache" / "anime-cascade") in text
    assert "models pull anime-cascade" not in text  # pull cannot fetch it: no circular advice
