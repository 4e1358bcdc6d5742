"""Checkpoints: an interrupted run resumed reaches the uninterrupted weights; saves are all-or-nothing."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prep.errors import LoraprepError, UsageError
from train.checkpoint import LoopState, list_checkpoints, save_checkpoint
from prep.progress import Reporter
from train.config import TrainConfig, load_config
from train.losslog import LossLog
from train.loop import train
from train.prepare import load_model
from trainsets import make_dataset

SETTINGS = {"seed": 0, "vae_batch_size": 2, "max_steps": 4, "batch_size": 2, "rank": 4, "alpha": 2, "lr": 1e-3, "flip": True,
            "caption_dropout": 0.3, "network_dropout": 0.1, "scheduler": "cosine", "warmup_steps": 1}


def _lora(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}


@pytest.mark.slow
@pytest.mark.parametrize("killed_at", [1, 3])
def test_kill_and_resume_equals_an_uninterrupted_run(testdata: Path, tmp_path: Path, tiny_sd15: Path,
                                                     killed_at: int) -> None:
    """Bit for bit, from the first checkpoint too (the latent cache is refilled after a resume)."""
    # 4 images, batch 2: the run crosses an epoch boundary; with seed 0 the second epoch pairs a flipped
    # image cached in the first batch with another partner, so a refilled cache must not depend on pairing
    manifest = make_dataset(testdata, tmp_path / "ds")
    straight = load_config(None, {**SETTINGS, "base": str(tiny_sd15), "output_dir": str(tmp_path / "a"),
                                  "save_every_steps": 1, "save_last": 2})
    base = load_model(straight, "cpu")
    train(manifest, straight, base=base)
    expected = _lora(base.unet)
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step-00000002", "step-00000003"]

    interrupted = straight.replace(output_dir=str(tmp_path / "b"), save_every_steps=killed_at, save_last=0)
    first = train(manifest, interrupted, stop=lambda step: step == killed_at)
    assert first.stopped_early and first.lora_files == []
    resumed_base = load_model(interrupted, "cpu")
    result = train(manifest, interrupted.replace(resume="latest"), base=resumed_base)
    assert result.steps == 4
    got = _lora(resumed_base.unet)
    assert got.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []
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


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond `limit` bytes fail with EFBIG, as a full disk fails them with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    previous = _save(tmp_path, 10, 16)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    with _file_size_limit(1 << 20), pytest.raises(LoraprepError, match="previous checkpoint .*step-00000010 is intact"):
        _save(tmp_path, 20, 1 << 20)  # 4 MiB of LoRA weights
    assert list_checkpoints(tmp_path) == [previous]
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]  # no temp folder left


@pytest.mark.parametrize("checkpoint", [True, False], ids=["after-a-checkpoint", "before-any-checkpoint"])
def test_a_full_disk_while_writing_the_loss_log_is_a_clean_error_whose_hint_matches_the_state(
        tmp_path: Path, checkpoint: bool) -> None:
    if checkpoint:
        _save(tmp_path, 3, 4)
    log = LossLog(tmp_path / "loss.csv")
    for step in range(1, 4):
        log.add({"step": step, "epoch": 1, "loss": 0.1, "loss_ema": 0.1, "lr": 1e-4})
    log.write()
    log.add({"step": 4, "epoch": 1, "loss": 0.1, "loss_ema": 0.1, "lr": 1e-4})
    with _file_size_limit(40), pytest.raises(LoraprepError, match="could not write .*loss.csv at step 4") as caught:
        log.write()
    # `--resume latest` without a checkpoint is a usage error (exit 2): hinted only where one exists
    assert ("--resume latest" in caught.value.hint) == checkpoint
    assert checkpoint or "run the same command again" in caught.value.hint
    assert (tmp_path / "loss.csv").read_text().count("\n") == 4  # header + the 3 rows written before


def _settings(tiny_sd15: Path, out: Path, **extra: object) -> TrainConfig:
    return load_config(None, {"base": str(tiny_sd15), "output_dir": str(out), "max_steps": 3, "rank": 2,
                              "batch_size": 2, "save_every_steps": 1, **extra})


def test_every_checkpoint_has_its_loss_rows_when_a_save_fails(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "out" / "lora-step00000002.safetensors").mkdir(parents=True)  # step 2's LoRA cannot be written
    with pytest.raises(LoraprepError, match="lora-step00000002"):
        train(manifest, _settings(tiny_sd15, tmp_path / "out"))
    rows = [int(line.split(",")[0]) for line in (tmp_path / "out" / "loss.csv").read_text().splitlines()[1:]]
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-00000001"] and rows == [1]
    (tmp_path / "out" / "lora-step00000002.safetensors").rmdir()
    resumed = train(manifest, _settings(tiny_sd15, tmp_path / "out", resume="latest"))
    assert resumed.steps == 3 and resumed.loss_csv.read_text().count("\n") == 4


def test_a_write_failing_before_any_checkpoint_does_not_hint_a_resume_that_would_fail(
        testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "out" / "lora-step00000001.safetensors").mkdir(parents=True)  # step 1's LoRA cannot be written
    with pytest.raises(LoraprepError, match="lora-step00000001") as caught:
        train(manifest, _settings(tiny_sd15, tmp_path / "out"))
    assert list_checkpoints(tmp_path / "out") == []
    assert "--resume" not in caught.value.hint and "run the same command again" in caught.value.hint
    with pytest.raises(UsageError):  # what the old hint led to
        train(manifest, _settings(tiny_sd15, tmp_path / "out", resume="latest"))


def test_resume_rewrites_a_lora_file_an_interrupted_save_left_missing(testdata: Path, tmp_path: Path,
                                                                     tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    train(manifest, _settings(tiny_sd15, tmp_path / "out"), stop=lambda step: step == 2)
    twin = tmp_path / "out" / "lora-step00000002.diffusers.safetensors"
    written = load_file(twin)
    twin.unlink()
    notes: list[str] = []
    reporter = Reporter(lambda e: notes.append(e.message) if e.kind == "note" else None)
    train(manifest, _settings(tiny_sd15, tmp_path / "out", resume="latest", max_steps=2), reporter=reporter)
    rewritten = load_file(twin)
    assert written.keys() == rewritten.keys() and all(torch.equal(written[k], rewritten[k]) for k in written)
    assert any("rewrote lora-step00000002.diffusers.safetensors" in n for n in notes)


def test_train_start_removes_only_a_killed_runs_temporaries(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    leftovers = [out / "checkpoints" / f".step-00000002.lp{dead.pid}.x1.tmp",
                 out / f".lora-step00000002.safetensors.lp{dead.pid}.x2.tmp",
                 out / "cache" / "latents" / "ab" / f".ab12.safetensors.lp{dead.pid}.x3.tmp"]
    leftovers[0].mkdir(parents=True)
    (leftovers[0] / "lora.safetensors").write_bytes(b"half")
    for path in leftovers[1:]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    live = out / f".loss.csv.lp{os.getpid()}.x4.tmp"  # a running writer's (this process)
    live.write_bytes(b"in progress")
    mine = out / ".notes.tmp"  # not our naming
    mine.write_text("user file")
    train(manifest, _settings(tiny_sd15, out, max_steps=1, cache_latents="disk"))
    assert not any(p.exists() for p in leftovers) and live.exists() and mine.exists()


class _Payload:
    """Unpickling this would create a file: the proof that a refused pickle never ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_in_a_checkpoint_is_refused_without_running(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    train(manifest, _settings(tiny_sd15, tmp_path / "out"), stop=lambda step: step == 1)
    marker = tmp_path / "pwned.txt"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)},
               list_checkpoints(tmp_path / "out")[-1] / "optimizer.pt")
    with pytest.raises(UsageError, match="optimizer.pt holds something other than tensors") as caught:
        train(manifest, _settings(tiny_sd15, tmp_path / "out", resume="latest"))
    assert "refusing" in caught.value.message and not marker.exists()
