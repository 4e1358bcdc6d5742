"""End-to-end training on tiny SD1.5/SD2-v/SDXL pipelines, loss maths, optimizers, the CLI."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from prep.errors import LoraprepError, UsageError
from train.config import load_config
from train.loop import TrainingDiverged, min_snr_weights, train
from train.optim import fused_adamw_applies, make_optimizer
from train.prepare import load_model, vae_dtype
from train.network import Network
from trainsets import make_dataset


@pytest.fixture(scope="module")
def manifest(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(testdata, tmp_path_factory.mktemp("loop") / "ds")


def _base_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}


CASES = {
    "sd15": {},
    "sdxl": {"train_text_encoder": True, "text_encoder_lr": 5e-5},
    "sd2v": {"min_snr_gamma": 5.0, "noise_offset": 0.05, "grad_accum": 2, "flip": True, "tag_dropout": 0.2,
             "conv_dim": 2, "preset": "full"},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_a_few_steps_train_only_the_lora(request: pytest.FixtureRequest, manifest: Path, tmp_path: Path,
                                         family: str) -> None:
    model = request.getfixturevalue(f"tiny_{family}")
    extra = {}
    if family == "sd15":
        (tmp_path / "prompts.txt").write_text("sks, 1girl, smile --w 64 --h 64 --s 2\nsks, cat --s 2 --d 7\n")
        extra = {"sample_every": 2, "sample_prompts": str(tmp_path / "prompts.txt")}
    config = load_config(None, {**extra, "base": str(model), "output_dir": str(tmp_path / "out"), "max_steps": 2,
                                "batch_size": 2, "rank": 4, "alpha": 4, "lr": 1e-3, **CASES[family]})
    base = load_model(config, "cpu")
    before = _base_weights(base.unet)
    text_before = [_base_weights(e) for e in base.text_encoders]
    result = train(manifest, config, base=base)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    after = _base_weights(base.unet)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for encoder, weights in zip(base.text_encoders, text_before, strict=True):
        assert all(torch.equal(weights[k], v) for k, v in _base_weights(encoder).items())
    lora_b = [p for n, p in base.unet.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    assert [p.name for p in result.lora_files] == ["lora.safetensors", "lora.diffusers.safetensors"]
    assert result.loss_csv.read_text().count("\n") == 3 and result.loss_plot.stat().st_size > 1000
    if family == "sd15":
        assert (tmp_path / "out" / "samples" / "lora-step00000002.png").stat().st_size > 0


@pytest.mark.slow
def test_sd_scripts_knobs_train_together(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    """Rank/module dropout, max-norm (reported each step), per-block rates, optimizer args and
    epoch samples with a chosen sampler, in one short run."""
    from prep.progress import Reporter

    (tmp_path / "prompts.toml").write_text('[prompt]\nwidth = 64\nheight = 64\nsample_steps = 2\n'
                                           '[[prompt.subset]]\nprompt = "sks, 1girl"\n', encoding="utf-8")
    config = load_config(None, {
        "base": str(tiny_sd15), "output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 2, "rank": 4,
        "alpha": 0, "lr": 1.0, "rank_dropout": 0.3, "module_dropout": 0.2, "scale_weight_norms": 1e-8,
        "up_lr_weight": "1,1,1,0.5,0.5,0.5", "down_lr_weight": "zeros", "optimizer": "dadaptadam",
        "optimizer_args": ["decouple=True", "weight_decay=0.1", "betas=0.9,0.99"], "sample_prompts": str(tmp_path / "prompts.toml"),
        "sample_every_epochs": 1, "sample_at_first": True, "sample_sampler": "k_euler_a"})
    events = []
    base = load_model(config, "cpu")
    result = train(manifest, config, base=base, reporter=Reporter(events.append))
    metrics = [e.metrics for e in events if e.metrics]
    assert result.steps == 4 and len(metrics) == 4
    assert all(m["max_norm"] <= 1.01e-8 and m["keys_scaled"] >= 0 for m in metrics)
    assert any(m["keys_scaled"] > 0 for m in metrics)
    assert not any(".lora_A" in n for n, _ in base.unet.named_modules() if n.startswith("down_blocks."))
    assert any("several learning rates" in e.message for e in events if e.kind == "note")
    from train.export import read_lora

    metadata = read_lora(result.lora_files[0]).metadata
    assert metadata["ss_scale_weight_norms"] == "1e-08" and "rank_dropout" in metadata["ss_network_args"]
    assert metadata["ss_optimizer"] == "dadaptadam(decouple=True,weight_decay=0.1,betas=0.9,0.99)"
    samples = sorted(p.name for p in (tmp_path / "out" / "samples").iterdir())
    assert samples == ["lora-step00000000.png", "lora-step00000002.png", "lora-step00000004.png"]


def test_nan_loss_stops_naming_the_cause_and_last_checkpoint(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "max_steps": 4,
                                "batch_size": 2, "rank": 4, "lr": 1e36, "max_grad_norm": 0, "save_every_steps": 1})
    with pytest.raises(TrainingDiverged, match=r"learning rate is too high .*checkpoint is .*step-0000000\d"):
        train(manifest, config)


@pytest.mark.parametrize(("gamma", "prediction"), [(1e9, "epsilon"), (5.0, "epsilon"), (5.0, "v_prediction")])
def test_min_snr_weights_clip_high_snr_steps(tiny_sd15: Path, gamma: float, prediction: str) -> None:
    scheduler = load_model(load_config(None, {"base": str(tiny_sd15)}), "cpu").noise_scheduler
    t = torch.tensor([0, 500, 999])
    weights = min_snr_weights(scheduler, t, gamma, prediction)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    expected = torch.clamp(snr, max=gamma) / (snr + 1 if prediction == "v_prediction" else snr)
    assert torch.allclose(weights, expected) and weights[0] <= weights[2] + (prediction == "v_prediction")


@pytest.mark.parametrize(("name", "lr"), [("adamw", 0.1), ("lion", 0.03), ("adafactor", 0.1), ("prodigy", 1.0)])
def test_each_optimizer_reduces_a_loss(name: str, lr: float) -> None:
    param = torch.nn.Parameter(torch.full((4, 4), 3.0))
    optimizer = make_optimizer(Network(None, unet_params=[param]), load_config(None, {"optimizer": name, "lr": lr,
                                                                                      "weight_decay": 0}))
    for _ in range(20):
        optimizer.zero_grad()
        (param ** 2).sum().backward()
        optimizer.step()
    assert (param ** 2).sum() < 16 * 9


def test_adamw8bit_without_bitsandbytes_says_how_to_install() -> None:
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    with pytest.raises(UsageError, match="bitsandbytes") as info:
        make_optimizer(Network(None, unet_params=[torch.nn.Parameter(torch.ones(2))]),
                       load_config(None, {"optimizer": "adamw8bit"}))
    assert "loraprep[bnb]" in info.value.hint


@pytest.mark.parametrize(("devices", "fused"), [(["cuda", "cuda"], True), (["cpu"], False), (["cuda", "cpu"], False),
                                                ([], False)])
def test_adamw_uses_its_fused_kernel_only_when_every_parameter_is_on_a_gpu(devices: list[str], fused: bool) -> None:
    assert fused_adamw_applies(devices) is fused


@pytest.mark.parametrize(("choice", "family", "expected"), [
    ("auto", "sdxl", torch.float32),  # on a CPU; bf16 only on a GPU that has it
    ("auto", "sd1", torch.float32),
    ("bf16", "sd1", torch.bfloat16),
    ("fp16", "sdxl", torch.float16),
])
def test_vae_dtype_is_fp32_unless_asked_or_sdxl_on_a_bf16_gpu(choice: str, family: str, expected: torch.dtype) -> None:
    assert vae_dtype(choice, family, "cpu") == expected


def test_channels_last_and_a_bf16_vae_train_and_key_their_latents(manifest: Path, tmp_path: Path,
                                                                  tiny_sd15: Path) -> None:
    from train.batcher import Batcher
    from train.data import load_training_set

    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "max_steps": 1, "rank": 2,
                                "channels_last": True, "vae_dtype": "bf16"})
    base = load_model(config, "cpu")
    conv = base.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and base.vae.dtype == torch.bfloat16
    fp32 = Batcher(load_model(config.replace(vae_dtype="fp32"), "cpu"), load_training_set(manifest), config, "cpu")
    assert Batcher(base, load_training_set(manifest), config, "cpu").vae_id != fp32.vae_id
    assert math.isfinite(train(manifest, config, base=base).final_loss)


def test_dry_run_prints_the_plan_without_loading_weights(manifest: Path, tiny_sd15: Path) -> None:
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd15), "--dry-run",
                                          "--batch-size", "2", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "6 steps, 3 epochs" in result.output and "64×64" in result.output and "GiB" in result.output
    assert "rank" in result.output and "SD 1.x" in result.output  # the settings table; the base's family


def test_cli_trains_and_reports_the_files(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd15), "--output",
                                          str(tmp_path), "--max-steps", "1", "--rank", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora.safetensors").is_file() and "1 steps" in result.output


def test_cli_refuses_an_unknown_config_key(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text("[network]\nrnak = 4\n")
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--config", str(tmp_path / "t.toml"), "--dry-run"])
    assert result.exit_code == 2 and "rnak" in result.output


def test_init_weights_from_a_lora_of_another_family_is_refused(manifest: Path, tmp_path: Path, tiny_sd15: Path,
                                                               tiny_sdxl: Path) -> None:
    first = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "a"), "max_steps": 1, "rank": 2})
    lora = train(manifest, first).lora_files[0]
    again = train(manifest, first.replace(output_dir=str(tmp_path / "b"), init_weights=str(lora)))
    assert again.steps == 1
    with pytest.raises(LoraprepError, match="(?i)sd ?1|family|SDXL"):
        train(manifest, first.replace(base=str(tiny_sdxl), output_dir=str(tmp_path / "c"), init_weights=str(lora)))


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "m.json", "--num-processes", "2", "--rank", "8"], ["train", "m.json", "--rank", "8"]),
    (["train", "m.json", "--num-processes=4"], ["train", "m.json"]),
])
def test_num_processes_relaunches_through_accelerate(argv: list[str], expected: list[str]) -> None:
    from train.launch import relaunch_command

    command = relaunch_command(argv, 2)
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"]
    assert command[command.index("cli") + 1:] == expected


def test_regularisation_images_carry_the_prior_loss_weight(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    from train.data import load_training_set
    from train.batcher import Batcher

    path = make_dataset(testdata, tmp_path / "ds", images={"photos/astronaut.png": "sks, woman"},
                        reg={"photos/camera.png": "man, camera"})
    config = load_config(None, {"base": str(tiny_sd15), "prior_loss_weight": 0.25, "output_dir": str(tmp_path)})
    data = load_training_set(path)
    batch = Batcher(load_model(config, "cpu"), data, config, "cpu").condition([0, 1], epoch=0, batch_number=0)
    assert {e.is_reg: w for e, w in zip(data.examples, batch.weights.tolist(), strict=True)} == {False: 1.0, True: 0.25}


def _lora_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}


@pytest.fixture
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate keeps one process-wide state whose mixed precision cannot change: start and end clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_skipping_the_lora_input_cast_under_autocast_changes_no_bit(manifest: Path, tmp_path: Path, tiny_sdxl: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast with gradient checkpointing (the recompute runs outside the skip): the same weights
    as a run that casts every LoRA input to fp32 first, to the last bit."""
    from train import loop

    config = load_config(None, {"base": str(tiny_sdxl), "max_steps": 3, "batch_size": 2, "rank": 4, "lr": 1e-3,
                                "mixed_precision": "bf16", "gradient_checkpointing": True})
    skipped = load_model(config, "cpu")
    train(manifest, config.replace(output_dir=str(tmp_path / "skip")), base=skipped)
    assert loop.plain_lora_layers(skipped.unet)  # there was something to skip
    monkeypatch.setattr(loop, "plain_lora_layers", lambda unet: [])
    casting = load_model(config, "cpu")
    train(manifest, config.replace(output_dir=str(tmp_path / "cast")), base=casting)
    ours, reference = _lora_weights(skipped.unet), _lora_weights(casting.unet)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in skipped.unet.modules())  # switched back on


@pytest.mark.slow
def test_images_decoded_ahead_on_worker_threads_train_exactly_as_in_place(manifest: Path, tmp_path: Path,
                                                                           tiny_sd15: Path) -> None:
    """No latent cache, flips and colour jitter drawn per sample: the worker threads' pixels are the
    loop's own, so two workers and none reach the same LoRA."""
    settings = {"base": str(tiny_sd15), "max_steps": 3, "batch_size": 2, "rank": 4, "lr": 1e-3,
                "cache_latents": "off", "flip": True, "color_aug": True}
    runs = {}
    for workers in (0, 2):
        config = load_config(None, {**settings, "workers": workers, "output_dir": str(tmp_path / str(workers))})
        base = load_model(config, "cpu")
        train(manifest, config, base=base)
        runs[workers] = _lora_weights(base.unet)
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_prefetched_batches_are_the_batches_made_in_place(manifest: Path, tiny_sd15: Path) -> None:
    from train.batcher import Batcher
    from train.data import load_training_set

    config = load_config(None, {"base": str(tiny_sd15), "cache_latents": "off", "flip": True, "color_aug": True,
                                "workers": 2})
    data = load_training_set(manifest)
    base = load_model(config, "cpu")
    ahead, in_place = Batcher(base, data, config, "cpu"), Batcher(base, data, config.replace(workers=0), "cpu")
    try:
        for batch_number, indices in enumerate([(0, 1), (2, 3), (1, 0)]):
            ahead.prefetch(indices, 1, batch_number)
        for batch_number, indices in enumerate([(0, 1), (2, 3), (1, 0)]):
            assert torch.equal(ahead.condition(indices, 1, batch_number).latents,
                               in_place.condition(indices, 1, batch_number).latents)
        assert not ahead._ahead  # each prefetched batch was used once
    finally:
        ahead.close()
