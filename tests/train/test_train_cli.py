"""`loraprep train` and `loraprep lora info` refuse bad input at once: before the settings table,
before loading weights, before importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from trainsets import make_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(testdata, tmp_path_factory.mktemp("cli") / "ds")


def _pickle_checkpoint(path: Path) -> Path:
    torch.save({"state_dict": {"cond_stage_model.transformer.x": torch.ones(1)}}, path)
    return path


BAD_BASES = {
    "missing folder": (lambda tmp: str(tmp / "no-such-model"), 2, "does not exist"),
    "hub id not downloaded": (lambda tmp: "nobody/no-such-model", 1, "not downloaded"),
    "folder that is not diffusers": (lambda tmp: str(tmp), 1, "not a diffusers"),
    "pickle without --allow-pickle": (lambda tmp: str(_pickle_checkpoint(tmp / "evil.ckpt")), 2, "pickle"),
    "a LoRA-like file": (lambda tmp: str(_safetensors(tmp / "x.safetensors")), 1, "not an SD1/SD2/SDXL"),
}


def _safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, path)
    return path


@pytest.mark.parametrize("case", list(BAD_BASES))
def test_dry_run_checks_the_base_without_loading_it(manifest: Path, tmp_path: Path, case: str) -> None:
    make, code, message = BAD_BASES[case]
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", make(tmp_path), "--dry-run"])
    assert result.exit_code == code, result.output
    assert message in result.output and "training settings" not in result.output


def test_dry_run_accepts_a_pickle_when_allowed(manifest: Path, tmp_path: Path) -> None:
    checkpoint = _pickle_checkpoint(tmp_path / "trusted.ckpt")
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(checkpoint), "--allow-pickle",
                                          "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "SD 1.x" in result.output


def test_train_without_a_base_fails_before_the_settings_table(manifest: Path) -> None:
    result = CliRunner().invoke(cli.app, ["train", str(manifest)])
    assert result.exit_code == 2 and "no base model given" in result.output
    assert "training settings" not in result.output


def test_base_config_trains_a_single_file_checkpoint_offline(manifest: Path, tmp_path: Path, tiny_sd15: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymodels import save_sd15_single_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = save_sd15_single_file(tiny_sd15, tmp_path / "tiny-sd15.safetensors")
    args = ["train", str(manifest), "--base", str(checkpoint), "--output", str(tmp_path / "out"), "--max-steps", "1",
            "--rank", "2"]
    without = CliRunner().invoke(cli.app, args)
    assert without.exit_code == 1 and "--base-config" in without.output
    result = CliRunner().invoke(cli.app, [*args, "--base-config", str(tiny_sd15)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "lora.safetensors").is_file()


def test_lora_info_on_a_missing_file_answers_without_importing_torch(tmp_path: Path) -> None:
    script = ("import json, sys; from typer.testing import CliRunner; import cli; "
              f"r = CliRunner().invoke(cli.app, ['lora', 'info', {str(tmp_path / 'gone.safetensors')!r}]); "
              "print(json.dumps([r.exit_code, r.output, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    code, output, imported_torch = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 2 and "does not exist" in output and not imported_torch
