"""--report-to tensorboard|wandb|all: what is logged, offline wandb, and the hint when a package is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from prep.errors import UsageError
from train.config import load_config
from train.loop import train
from train.publish import check_trackers
from train.trackers import wanted
from trainsets import make_dataset


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, []), ({"tensorboard": True}, ["tensorboard"]), ({"report_to": "wandb"}, ["wandb"]),
    ({"report_to": "all"}, ["tensorboard", "wandb"]), ({"report_to": "wandb", "tensorboard": True}, ["tensorboard", "wandb"]),
])
def test_report_to_and_the_tensorboard_switch_combine(flags: dict, expected: list[str]) -> None:
    assert wanted(load_config(None, flags)) == expected


def test_a_missing_wandb_is_a_one_line_hint_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UsageError, match="needs the wandb package") as caught:
        check_trackers(load_config(None, {"report_to": "wandb"}))
    assert caught.value.hint == "pip install 'loraprep[wandb]'"


@pytest.mark.slow
def test_offline_wandb_run_holds_loss_lr_samples_and_settings(testdata: Path, tiny_sd15: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "prompts.txt").write_text("sks, 1girl --w 64 --h 64 --s 2\n")
    out = tmp_path / "out"
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(out), "max_steps": 2, "batch_size": 4,
                                "rank": 4, "report_to": "wandb", "sample_prompts": str(tmp_path / "prompts.txt"),
                                "train_text_encoder": True, "text_encoder_lr": 5e-5})
    train(manifest, config)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss", b"train/lr", b"lr/group1", b"samples", b"rank"):  # settings: the run's config
        assert key in records
    assert list((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
