"""`loraprep tag` and `loraprep models` through the real CLI: files written, output, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.sidecars import read_meta

runner = CliRunner()


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("photos/rocket.jpg", "photos/astronaut.png"):
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def _flat(text: str) -> str:
    """Rich wraps tables to the terminal width; compare words, not layout."""
    return re.sub(r"[\s│┃]+", " ", text)


def test_tag_writes_captions_with_trigger_first_and_exits_0(wd14_model, dataset) -> None:
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--trigger", "sks",
                                 "--always-first", "solo", "--prune-character", "--exclude", "middling,^_^"])
    assert result.exit_code == 0, result.output
    tags = (dataset / "rocket.txt").read_text(encoding="utf-8").strip().split(", ")
    assert tags[:3] == ["solo", "sks", "hatsune miku"]
    assert "long hair" not in tags and "middling" not in tags and "^_^" not in tags
    assert read_meta(dataset / "rocket.jpg")["tag"]["keep_tokens"] == 2
    assert "CPUExecutionProvider" in result.output  # which backend ran is stated


def test_dry_run_shows_removals_and_writes_nothing(wd14_model, dataset) -> None:
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--prune-character", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dataset.iterdir()) == ["astronaut.png", "rocket.jpg"]
    flat = _flat(result.output)
    assert "long hair (trait: hair)" in flat and "cat ears (trait: ears)" in flat
    assert "Removed in total" in flat


def test_skip_existing_is_the_default_and_keeps_hand_captions(wd14_model, dataset) -> None:
    (dataset / "rocket.txt").write_text("my caption\n", encoding="utf-8")
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model)])
    assert result.exit_code == 0, result.output
    assert (dataset / "rocket.txt").read_text(encoding="utf-8") == "my caption\n"
    assert (dataset / "astronaut.txt").exists()


def test_missing_model_exits_1_with_the_pull_hint(dataset) -> None:
    result = runner.invoke(app, ["tag", str(dataset)])
    assert result.exit_code == 1
    assert "loraprep models pull wd-swinv2-tagger-v3" in _flat(result.output)
    assert not list(dataset.glob("*.txt"))


def test_corrupt_image_exits_1_and_is_listed(wd14_model, dataset) -> None:
    (dataset / "zero.png").write_bytes(b"")
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model)])
    assert result.exit_code == 1
    assert "zero.png" in result.output and (dataset / "rocket.txt").exists()


@pytest.mark.parametrize("args", [
    ["--mode", "replace-all"], ["--replace", "no-equals-sign"], ["--rating", "middle"], ["--captioner", "gpt"],
    ["--general", "1.5"], ["--model", "no-such-model"],
])
def test_bad_options_exit_2(args, dataset) -> None:
    result = runner.invoke(app, ["tag", str(dataset), *args])
    assert result.exit_code == 2, result.output


def test_models_list_json_shows_pinned_taggers_and_captioners() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("wd-swinv2-tagger-v3", "wd-vit-tagger-v3", "wd-convnext-tagger-v3", "wd-eva02-large-tagger-v3",
                 "wd-v1-4-moat-tagger-v2", "blip-large", "blip-base"):
        assert re.fullmatch(r"[0-9a-f]{40}", rows[name]["revision"]), name
        assert rows[name]["available"] is False
    assert rows["wd-vit-tagger-v3"]["kind"] == "tagger" and rows["blip-base"]["kind"] == "captioner"


def test_models_path_prints_the_cache_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path))
    result = runner.invoke(app, ["models", "path", "wd-vit-tagger-v3"])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tmp_path / "wd-vit-tagger-v3")


def test_model_copied_into_the_cache_is_available_and_used(wd14_model, dataset, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "cache"))
    shutil.copytree(wd14_model, tmp_path / "cache" / "wd-swinv2-tagger-v3")
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert rows["wd-swinv2-tagger-v3"]["available"] is True
    result = runner.invoke(app, ["tag", str(dataset)])
    assert result.exit_code == 0, result.output
    assert read_meta(dataset / "rocket.jpg")["tag"]["model"] == "wd-swinv2-tagger-v3"


@pytest.mark.parametrize(("names", "code", "text"), [
    (["no-such-model"], 2, "unknown model"),
    (["wd-vit-tagger-v3"], 1, "loraprep models pull wd-vit-tagger-v3"),  # offline: HF_HUB_OFFLINE=1
])
def test_models_pull_fails_clearly(names, code, text) -> None:
    result = runner.invoke(app, ["models", "pull", *names])
    assert result.exit_code == code
    assert text in _flat(result.output)


# ---- captions someone wrote: journalled, never clobbered, never rewritten when not UTF-8

ODD_CAPTION = b"\xef\xbb\xbfmy caption,  hand written \r\n\r\n"  # BOM, CRLF, spaces: undo must give these bytes back


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_changing_captions_is_journalled_and_captions_undo_restores_them_byte_exactly(wd14_model, dataset, mode) -> None:
    (dataset / "rocket.txt").write_bytes(ODD_CAPTION)
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--mode", mode])
    assert result.exit_code == 0, result.output
    assert (dataset / "rocket.txt").read_bytes() != ODD_CAPTION and (dataset / "astronaut.txt").exists()
    assert "loraprep captions undo" in _flat(result.output)
    undone = runner.invoke(app, ["captions", "undo", str(dataset)])
    assert undone.exit_code == 0, undone.output
    assert (dataset / "rocket.txt").read_bytes() == ODD_CAPTION
    assert not (dataset / "astronaut.txt").exists()  # created by the run: undo removes it


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_caption_that_is_not_utf8_is_never_rewritten(wd14_model, dataset, mode) -> None:
    latin1 = "café, crème brûlée\n".encode("latin-1")
    (dataset / "rocket.txt").write_bytes(latin1)
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--mode", mode])
    assert result.exit_code == 1, result.output
    assert (dataset / "rocket.txt").read_bytes() == latin1
    assert "not UTF-8" in _flat(result.output) and "rocket" in result.output
    assert (dataset / "astronaut.txt").exists() and "tag" not in read_meta(dataset / "rocket.jpg")


def test_a_caption_changed_between_tagging_and_writing_is_left_as_the_other_program_wrote_it(
        wd14_model, dataset, monkeypatch) -> None:
    import contextlib

    from commands import tagging
    from prep.progress import Reporter

    (dataset / "rocket.txt").write_text("before\n", encoding="utf-8")
    (dataset / "astronaut.txt").write_text("before too\n", encoding="utf-8")
    drawing = tagging.rich_reporter

    @contextlib.contextmanager
    def editing_when_tagging_ends(*args, **kwargs):
        """The CLI's real reporter; when every image is tagged (captions read, none written yet),
        another program rewrites one caption."""
        with drawing(*args, **kwargs) as shown:
            def sink(event):
                if event.kind == "end" and event.label == "tagging":
                    (dataset / "rocket.txt").write_text("edited meanwhile\n", encoding="utf-8")
                shown.emit(event)
            yield Reporter(sink)

    monkeypatch.setattr(tagging, "rich_reporter", editing_when_tagging_ends)
    result = runner.invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--mode", "overwrite"])
    assert result.exit_code == 1, result.output
    assert (dataset / "rocket.txt").read_text(encoding="utf-8") == "edited meanwhile\n"
    assert "changed on disk while tagging" in _flat(result.output) and "rocket.jpg" in result.output
    assert (dataset / "astronaut.txt").read_text(encoding="utf-8") != "before too\n"
    monkeypatch.setattr(tagging, "rich_reporter", drawing)
    undone = runner.invoke(app, ["captions", "undo", str(dataset)])  # the journal holds only what was written
    assert undone.exit_code == 0, undone.output
    assert (dataset / "astronaut.txt").read_text(encoding="utf-8") == "before too\n"
    assert (dataset / "rocket.txt").read_text(encoding="utf-8") == "edited meanwhile\n"
