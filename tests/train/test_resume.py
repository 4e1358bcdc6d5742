"""Checkpoints: an interrupted run resumed reaches the uninterrupted weights; saves are all-or-nothing."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest
import torch

from prep.errors import LoraprepError, UsageError
from train.checkpoint import LoopState, list_checkpoints, save_checkpoint
from train.config import load_config
from train.loop import train
from train.prepare import load_model
from trainsets import make_dataset

SETTINGS = {"max_steps": 4, "batch_size": 2, "rank": 4, "alpha": 2, "lr": 1e-3, "flip": True,
            "caption_dropout": 0.3, "network_dropout": 0.1, "scheduler": "cosine", "warmup_steps": 1}


def _lora(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")  # 4 images, batch 2: the run crosses an epoch boundary
    straight = load_config(None, {**SETTINGS, "base": str(tiny_sd15), "output_dir": str(tmp_path / "a"),
                                  "save_every_steps": 1, "save_last": 2})
    base = load_model(straight, "cpu")
    train(manifest, straight, base=base)
    expected = _lora(base.unet)
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step-00000002", "step-00000003"]

    interrupted = straight.replace(output_dir=str(tmp_path / "b"), save_every_steps=3, save_last=0)
    first = train(manifest, interrupted, stop=lambda step: step == 3)
    assert first.stopped_early and first.lora_files == []
    resumed_base = load_model(interrupted, "cpu")
    result = train(manifest, interrupted.replace(resume="latest"), base=resumed_base)
    assert result.steps == 4
    got = _lora(resumed_base.unet)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:] == \
        (tmp_path / "a" / "loss.csv").read_text().splitlines()[1:]


def test_resume_with_another_network_shape_is_refused(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "max_steps": 2, "rank": 2,
                                "batch_size": 2, "save_every_steps": 1})
    train(manifest, config)
    with pytest.raises(UsageError, match="does not match this network"):
        train(manifest, config.replace(rank=4, resume="latest"))


@pytest.mark.parametrize("resume", ["latest", "no-such-folder"])
def test_resume_without_a_checkpoint_is_a_usage_error(testdata: Path, tmp_path: Path, tiny_sd15: Path,
                                                       resume: str) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "out"), "resume": resume})
    with pytest.raises(UsageError, match="checkpoint"):
        train(manifest, config)


def _save(out: Path, step: int, size: int) -> Path:
    return save_checkpoint(out, LoopState(global_step=step), lora={"w": torch.ones(size)},
                           optimizer={"state": {}, "param_groups": []}, scheduler={"last_epoch": step}, config={})


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    previous = _save(tmp_path, 10, 16)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # files beyond 1 MiB fail with EFBIG, like ENOSPC
    try:
        with pytest.raises(LoraprepError, match="previous checkpoint .*step-00000010 is intact"):
            _save(tmp_path, 20, 1 << 20)  # 4 MiB of LoRA weights
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert list_checkpoints(tmp_path) == [previous]
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]  # no temp folder left
