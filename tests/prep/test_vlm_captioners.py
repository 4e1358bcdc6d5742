"""`loraprep tag --captioner florence2 | joycaption | qwen-vl` on tiny random models built from each
real architecture, with offline processors: the loading path users meet, one caption per image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vlmmodels import tiny_florence2, tiny_llava, tiny_qwen_vl  # noqa: F401

from cli import app
from prep.sidecars import read_meta
from prep.tagging.vlm import JOYCAPTION_PROMPTS

runner = CliRunner()
IMAGES = ("photos/rocket.jpg", "photos/astronaut.png", "anime/lucy_happy.png")


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def _tag(folder: Path, *args: str):
    return runner.invoke(app, ["tag", str(folder), "--max-new-tokens", "6", *args])


@pytest.mark.parametrize(("captioner", "fixture", "extra"), [
    ("florence2", "tiny_florence2", ["--task", "caption"]),
    ("joycaption", "tiny_llava", ["--prompt", "booru-like"]),
])
def test_each_captioner_writes_one_caption_per_image(captioner, fixture, extra, dataset, request) -> None:
    model = request.getfixturevalue(fixture)
    result = _tag(dataset, "--captioner", captioner, "--caption-dir", str(model), "--trigger", "sks", *extra)
    assert result.exit_code == 0, result.output
    captions = {p.stem: p.read_text(encoding="utf-8") for p in dataset.glob("*.txt")}
    assert sorted(captions) == ["astronaut", "lucy_happy", "rocket"]
    meta = read_meta(dataset / "rocket.jpg")["tag"]
    assert all(text.startswith("sks, ") and len(text.strip()) > len("sks,") for text in captions.values())
    assert captions["rocket"].strip() == "sks, " + meta["caption"]
    assert meta["caption_model"] == model.name and meta["captioner"] == captioner
    if captioner == "joycaption":
        assert meta["prompt"] == JOYCAPTION_PROMPTS["booru-like"]
    else:
        assert meta["task"] == "caption"
    assert f"{captioner} {model.name} on cpu" in " ".join(result.output.split())


def test_dry_run_shows_the_captions_and_writes_nothing(tiny_florence2, dataset) -> None:
    result = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tiny_florence2), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Captions that would be written (3 of 3)" in result.output
    assert sorted(p.name for p in dataset.iterdir()) == sorted(Path(n).name for n in IMAGES)


def test_a_template_combines_wd14_tags_with_the_sentence(tiny_florence2, wd14_model, dataset) -> None:
    result = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tiny_florence2), "--model-dir",
                  str(wd14_model), "--combine", "{trigger}, {tags}. {caption}", "--trigger", "sks", "--max-tokens", "0")
    assert result.exit_code == 0, result.output
    caption = (dataset / "rocket.txt").read_text(encoding="utf-8").strip()
    meta = read_meta(dataset / "rocket.jpg")
    assert caption.startswith("sks, hatsune miku") and caption.endswith(". " + meta["tag"]["caption"])
    assert meta["tags"]["general"]


@pytest.mark.parametrize(("captioner", "pull"), [("florence2", "florence-2-base"), ("joycaption", "joycaption-beta-one"),
                                                 ("qwen-vl", "qwen2.5-vl-3b")])
def test_a_missing_model_names_its_pull_command_and_touches_nothing(captioner, pull, dataset, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "models"))
    result = _tag(dataset, "--captioner", captioner)
    assert result.exit_code == 1
    assert f"loraprep models pull {pull}" in result.output
    assert not list(dataset.glob("*.txt")) and not list(dataset.glob("*.json"))


def test_a_broken_image_is_skipped_with_its_reason(tiny_llava, dataset) -> None:
    (dataset / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = _tag(dataset, "--captioner", "joycaption", "--caption-dir", str(tiny_llava))
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "cannot open" in result.output
    assert len(list(dataset.glob("*.txt"))) == 3


def test_a_folder_that_is_not_a_model_is_a_model_mismatch(dataset, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    result = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no config.json" in result.output
    assert not list(dataset.glob("*.txt"))


def test_qwen_vl_writes_one_caption_per_image(tiny_qwen_vl, dataset) -> None:
    """Runs with or without torchvision: without it (CPU-only torch) the processor is built without its
    video half (prep.tagging.imageonly)."""
    result = _tag(dataset, "--captioner", "qwen-vl", "--caption-dir", str(tiny_qwen_vl), "--prompt", "Describe it.")
    assert result.exit_code == 0, result.output
    assert len(list(dataset.glob("*.txt"))) == 3
    assert read_meta(dataset / "rocket.jpg")["tag"]["prompt"] == "Describe it."


def test_batch_size_reaches_the_captioner(tiny_florence2, dataset, monkeypatch) -> None:
    from prep.tagging.vlm import Florence2Captioner

    seen: list[int] = []
    real = Florence2Captioner.caption

    def counting(self, images):  # the real captioner runs; only the batch sizes are recorded
        seen.append(len(images))
        return real(self, images)

    monkeypatch.setattr(Florence2Captioner, "caption", counting)
    result = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tiny_florence2), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert seen == [3] and len(list(dataset.glob("*.txt"))) == 3


def test_device_reaches_the_captioner(tiny_florence2, dataset) -> None:
    import torch

    result = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tiny_florence2), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"florence2 {tiny_florence2.name} on cpu" in " ".join(result.output.split())
    if torch.cuda.is_available():
        return
    for path in dataset.glob("*.txt"):
        path.unlink()
    refused = _tag(dataset, "--captioner", "florence2", "--caption-dir", str(tiny_florence2), "--device", "cuda")
    assert refused.exit_code != 0
    assert "torch sees no CUDA GPU" in " ".join(refused.output.split())
    assert not list(dataset.glob("*.txt"))
