"""A v-prediction single-file base is recognised from its header and trained as v, with no flag;
`lora info` and the sample grids say what the model predicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import cli
from train.prediction import checkpoint_hints, lora_prediction
from trainsets import make_dataset


@pytest.mark.parametrize(("metadata", "keys", "prediction", "ztsnr"), [
    ({"modelspec.prediction_type": "v"}, (), "v_prediction", False),
    ({"ss_v_parameterization": "True"}, (), "v_prediction", False),
    ({"modelspec.prediction_type": "epsilon", "ss_v_parameterization": "True"}, (), "epsilon", False),
    ({}, ("v_pred", "ztsnr"), "v_prediction", True),
    ({"ss_zero_terminal_snr": "True", "ss_v_parameterization": "true"}, (), "v_prediction", True),
    ({}, (), None, False),
])
def test_a_checkpoint_header_says_what_it_predicts(tmp_path: Path, metadata: dict, keys: tuple,
                                                   prediction: str | None, ztsnr: bool) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2), **{k: torch.zeros(0) for k in keys}}, str(path), metadata=metadata or None)
    hints = checkpoint_hints(path)
    assert (hints.prediction_type, hints.zero_terminal_snr) == (prediction, ztsnr)
    assert checkpoint_hints(tmp_path) == checkpoint_hints(str(tmp_path / "missing.safetensors")) == type(hints)()


@pytest.mark.parametrize(("metadata", "shown"), [
    ({"modelspec.prediction_type": "v", "ss_zero_terminal_snr": "True"}, "v_prediction + zero terminal SNR"),
    ({"ss_v_parameterization": "False"}, "epsilon"), ({}, None)])
def test_a_lora_says_what_its_base_predicted(metadata: dict, shown: str | None) -> None:
    assert lora_prediction(metadata) == shown


@pytest.fixture(scope="module")
def vpred_file(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1.5 as a single file that says, as v-pred SDXL fine-tunes do, that it predicts v."""
    from tinymodels import save_sd15_single_file

    path = save_sd15_single_file(tiny_sd15, tmp_path_factory.mktemp("vpred") / "vpred.safetensors")
    save_file(load_file(str(path)), str(path), metadata={"modelspec.prediction_type": "v",
                                                         "ss_v_parameterization": "true"})
    return path


def test_a_v_pred_single_file_loads_as_v_prediction(vpred_file: Path, tiny_sd15: Path) -> None:
    from train.model import load_base

    base = load_base(vpred_file, config=tiny_sd15)
    assert base.prediction_type == "v_prediction"
    assert base.noise_scheduler.config.prediction_type == base.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.slow
def test_a_v_pred_single_file_trains_as_v_with_ztsnr_and_says_so(vpred_file: Path, tiny_sd15: Path, testdata: Path,
                                                                  tmp_path: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "prompts.txt").write_text("sks, 1girl --w 64 --h 64 --s 2\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, [
        "train", str(manifest), "--base", str(vpred_file), "--base-config", str(tiny_sd15), "--zero-terminal-snr",
        "--max-steps", "2", "--rank", "4", "--batch-size", "2", "--output", str(out),
        "--sample-prompts", str(tmp_path / "prompts.txt")])
    assert result.exit_code == 0, result.output
    assert "prediction type: v_prediction with zero terminal SNR" in result.output
    info = CliRunner().invoke(cli.app, ["lora", "info", str(out / "lora.safetensors"), "--json"])
    assert '"prediction": "v_prediction + zero terminal SNR"' in info.output
    from train.export import read_lora

    assert read_lora(out / "lora.safetensors").metadata["ss_v_parameterization"] == "True"
    assert (out / "samples" / "lora-step00000002.png").is_file()


def test_the_sample_label_names_the_prediction_type(vpred_file: Path, tiny_sd15: Path) -> None:
    from train.model import load_base
    from train.noise import rescale_zero_terminal_snr
    from train.sample import prediction_label

    base = load_base(vpred_file, config=tiny_sd15)
    assert prediction_label(base) == "v"
    rescale_zero_terminal_snr(base.noise_scheduler)
    assert prediction_label(base) == "v, ztsnr" and math.isclose(base.noise_scheduler.alphas_cumprod[-1], 0.0)


@pytest.mark.parametrize(("prediction", "flag", "expected"), [("auto", False, True), ("v_prediction", False, True),
                                                              ("epsilon", False, False), ("auto", True, True)])
def test_a_ztsnr_marker_turns_zero_terminal_snr_on_unless_told_epsilon(tmp_path: Path, prediction: str, flag: bool,
                                                                       expected: bool) -> None:
    from train.config import load_config
    from train.noise import uses_zero_terminal_snr

    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(path))
    config = load_config(None, {"base": str(path), "prediction_type": prediction, "zero_terminal_snr": flag or None})
    assert uses_zero_terminal_snr(config) is expected
