"""The timm backend for WD v3 taggers: the same scores as the ONNX path, and how a backend is chosen.

Each v3 architecture (ViT, SwinV2, ConvNeXt, EVA02) is built as a seeded random timm model, saved
as its repository ships it (config.json + model.safetensors) and exported to ONNX with the published
signature; both backends then score the same real images.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from tagmodels import TIMM_V3, build_timm_tagger
from typer.testing import CliRunner

from cli import app
from prep.errors import ModelMismatch, UsageError
from prep.images import open_image
from prep.sidecars import read_meta
from prep.tagging.device import Placement, place
from prep.tagging.wd14 import Wd14Tagger, preprocess
from prep.tagging.wd_timm import TimmScorer

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (the dev setup installs it: see .ci/run)")
IMAGES = ("photos/rocket.jpg", "photos/astronaut.png", "anime/lucy_happy.png", "anime/bg_meadow.jpg")


@pytest.fixture(scope="module", params=sorted(TIMM_V3))
def v3_model(request, tmp_path_factory) -> Path:
    return build_timm_tagger(tmp_path_factory.mktemp("timm") / f"wd-{request.param}-tagger-v3", request.param)


@needs_timm
def test_timm_backend_scores_match_the_onnx_export_within_1e_4(v3_model, testdata) -> None:
    batch = np.stack([preprocess(open_image(testdata / name), 448) for name in IMAGES])
    onnx = Wd14Tagger(v3_model).probabilities(batch)
    timm = Wd14Tagger(v3_model, scorer=TimmScorer(v3_model, "cpu")).probabilities(batch)
    assert onnx.shape == timm.shape == (len(IMAGES), 16)
    assert np.abs(onnx - timm).max() < 1e-4
    assert onnx.std() > 0.01  # the scores differ between tags and images: the comparison means something


@needs_timm
def test_tag_backend_timm_writes_the_same_captions_as_onnx(v3_model, testdata, tmp_path) -> None:
    captions = {}
    for backend in ("onnx", "timm"):
        folder = tmp_path / backend
        folder.mkdir()
        for name in IMAGES[:2]:
            shutil.copy(testdata / name, folder)
        result = CliRunner().invoke(app, ["tag", str(folder), "--model-dir", str(v3_model), "--backend", backend,
                                          "--device", "cpu", "--general", "0.5"])
        assert result.exit_code == 0, result.output
        captions[backend] = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}
        assert ("timm on cpu" if backend == "timm" else "CPUExecutionProvider") in result.output
        assert read_meta(folder / "rocket.jpg")["tags"]["general"]
    assert captions["onnx"] == captions["timm"] and len(captions["onnx"]) == 2


@needs_timm
def test_timm_weights_that_do_not_fit_the_config_are_a_model_mismatch(tmp_path) -> None:
    folder = build_timm_tagger(tmp_path / "vit", "vit", onnx=False)
    other = build_timm_tagger(tmp_path / "convnext", "convnext", onnx=False)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelMismatch, match="timm cannot build vit_base_patch16_224"):
        TimmScorer(folder)


@needs_timm
def test_timm_import_leaves_no_torchvision_stand_in_behind() -> None:
    import sys

    from prep.tagging.wd_timm import import_timm

    import_timm()
    assert "timm" in sys.modules
    assert all(not name.startswith("torchvision") for name in sys.modules) or importlib.util.find_spec("torchvision")


# has_onnx, has_timm, onnx_gpu, torch_cuda, backend, device → expected (backend, device, notes?) or error
PLACEMENTS = [
    ((True, True, False, False), "auto", "auto", ("onnx", "cpu", False)),     # CPU machine
    ((True, True, True, True), "auto", "auto", ("onnx", "cuda", False)),      # onnxruntime-gpu installed
    ((True, True, False, True), "auto", "auto", ("timm", "cuda", False)),     # CUDA torch, CPU onnxruntime
    ((True, False, False, True), "auto", "auto", ("onnx", "cpu", True)),      # … but no timm weights: says so
    ((True, True, False, True), "auto", "cpu", ("onnx", "cpu", False)),
    ((False, True, False, False), "auto", "auto", ("timm", "cpu", False)),    # only timm weights
    ((True, True, False, False), "timm", "auto", ("timm", "cpu", False)),
    ((True, True, True, True), "timm", "auto", ("timm", "cuda", False)),
    ((True, True, False, True), "auto", "cuda", ("timm", "cuda", False)),
    ((True, True, False, False), "auto", "cuda", "no CUDA GPU"),
    ((True, False, False, True), "onnx", "cuda", "no GPU provider"),
    ((True, False, False, False), "timm", "auto", "needs config.json"),
    ((True, True, True, False), "timm", "cuda", "torch sees no CUDA"),
    ((False, False, False, False), "auto", "auto", "neither model.onnx"),
]


@pytest.mark.parametrize(("machine", "backend", "device", "expected"), PLACEMENTS)
def test_backend_and_device_are_chosen_from_the_request_and_the_machine(machine, backend, device, expected) -> None:
    has_onnx, has_timm, onnx_gpu, torch_cuda = machine
    kwargs = dict(has_onnx=has_onnx, has_timm=has_timm, onnx_gpu=onnx_gpu, torch_cuda=torch_cuda)
    if isinstance(expected, str):
        with pytest.raises(UsageError, match=expected):
            place(backend, device, **kwargs)
        return
    placement = place(backend, device, **kwargs)
    assert (placement.backend, placement.device, placement.note is not None) == expected
    assert isinstance(placement, Placement)


@needs_timm
def test_a_pulled_timm_twin_tags_when_the_onnx_model_is_not_there(testdata, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "models"
    build_timm_tagger(cache / "wd-vit-tagger-v3-timm", "vit", onnx=False)
    monkeypatch.setenv("LORAPREP_MODELS", str(cache))
    folder = tmp_path / "ds"
    folder.mkdir()
    shutil.copy(testdata / "photos/rocket.jpg", folder)
    result = CliRunner().invoke(app, ["tag", str(folder), "--model", "wd-vit-tagger-v3"])
    assert result.exit_code == 0, result.output
    assert "timm on cpu" in result.output
    assert read_meta(folder / "rocket.jpg")["tag"]["model"] == "wd-vit-tagger-v3"


def test_neither_weights_pulled_names_the_onnx_pull_command(testdata, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "models"))
    folder = tmp_path / "ds"
    folder.mkdir()
    shutil.copy(testdata / "photos/rocket.jpg", folder)
    result = CliRunner().invoke(app, ["tag", str(folder), "--model", "wd-vit-tagger-v3"])
    assert result.exit_code == 1
    assert "loraprep models pull wd-vit-tagger-v3`" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["rocket.jpg"]
