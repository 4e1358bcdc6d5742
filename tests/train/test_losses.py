"""Loss and noise options against their published formulas (sd-scripts' meanings), on fixed tensors,
then end to end on the tiny models."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from typer.testing import CliRunner

import cli
from prep.errors import UsageError
from train.config import LossConfig, load_config
from train.losses import (debiased_weights, elementwise_loss, huber_threshold, masked, min_snr_weights,
                          per_sample_loss, snr_scale, timestep_weights)
from train.noise import (noisy_latents, pyramid_noise, rescale_zero_terminal_snr, sample_noise, sample_timesteps,
                         zero_terminal_snr_betas)
from trainsets import make_dataset


def _scheduler() -> DDPMScheduler:
    """SD's own training schedule (scaled_linear 0.00085–0.012 over 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _snr(scheduler: DDPMScheduler, t: torch.Tensor) -> torch.Tensor:
    a = scheduler.alphas_cumprod[t].double()
    return a / (1 - a)


PRED = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
TARGET = torch.tensor([[[[0.0, 0.0], [0.0, 0.3]]]])


@pytest.mark.parametrize(("loss_type", "c", "formula"), [
    ("l2", None, lambda d, c: d ** 2),
    ("l1", None, lambda d, c: d.abs()),
    ("huber", 0.1, lambda d, c: 2 * c * ((d ** 2 + c ** 2).sqrt() - c)),
    ("smooth_l1", 0.1, lambda d, c: 2 * ((d ** 2 + c ** 2).sqrt() - c)),
    ("huber", 1.0, lambda d, c: 2 * c * ((d ** 2 + c ** 2).sqrt() - c)),
])
def test_each_loss_type_is_its_published_formula(loss_type: str, c: float | None, formula) -> None:
    huber_c = torch.tensor([c]) if c is not None else None
    found = elementwise_loss(PRED, TARGET, loss_type, huber_c)
    assert torch.allclose(found, formula(PRED - TARGET, c))


def test_huber_is_quadratic_near_zero_and_linear_far_away() -> None:
    c = torch.tensor([0.1])
    small, large = torch.tensor([[[[1e-3]]]]), torch.tensor([[[[100.0]]]])
    zero = torch.zeros(1, 1, 1, 1)
    assert elementwise_loss(small, zero, "huber", c).item() == pytest.approx(1e-6, rel=1e-2)  # ≈ d²
    assert elementwise_loss(large, zero, "huber", c).item() == pytest.approx(2 * 0.1 * 100, rel=1e-2)  # ≈ 2c|d|


@pytest.mark.parametrize(("schedule", "scale", "expected"), [
    ("constant", 2.0, lambda s, t: torch.full(t.shape, 0.1 * 2.0, dtype=torch.float64)),
    ("exponential", 1.0, lambda s, t: torch.exp(t.double() * math.log(0.1) / 1000)),
    ("exponential", 3.0, lambda s, t: 3.0 * torch.exp(t.double() * math.log(0.1) / 1000)),
    ("snr", 5.0, lambda s, t: (1 - 0.1) / (1 + ((1 - s.alphas_cumprod[t].double()) / s.alphas_cumprod[t]) ** 0.5) ** 2
     + 0.1),
])
def test_huber_c_follows_its_schedule(schedule: str, scale: float, expected) -> None:
    scheduler, t = _scheduler(), torch.tensor([0, 250, 999])
    loss = LossConfig(loss_type="huber", huber_schedule=schedule, huber_c=0.1, huber_scale=scale)
    found = huber_threshold(scheduler, t, loss)
    assert torch.allclose(found.double(), expected(scheduler, t).double(), rtol=1e-4)


def test_exponential_huber_c_runs_from_one_to_c() -> None:
    loss = LossConfig(loss_type="huber", huber_schedule="exponential", huber_c=0.1)
    found = huber_threshold(_scheduler(), torch.tensor([0, 1000]), loss)
    assert found.tolist() == pytest.approx([1.0, 0.1], rel=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_debiased_estimation_is_one_over_root_snr_capped_at_1000(prediction: str) -> None:
    scheduler, t = _scheduler(), torch.tensor([0, 10, 500, 999])
    snr = _snr(scheduler, t).clamp(max=1000)
    expected = 1 / (snr + 1) if prediction == "v_prediction" else 1 / snr.sqrt()
    assert _snr(scheduler, t)[0] > 1000  # the cap is in play at t = 0
    assert torch.allclose(debiased_weights(scheduler, t, prediction).double(), expected, rtol=1e-4)


def test_v_pred_scaling_and_v_pred_like_loss_read_snr_over_snr_plus_one() -> None:
    scheduler, t = _scheduler(), torch.tensor([0, 400, 999])
    snr = _snr(scheduler, t).clamp(max=1000)
    scale = snr / (snr + 1)
    assert torch.allclose(snr_scale(scheduler, t).double(), scale, rtol=1e-5)
    both = LossConfig(scale_v_pred_loss_like_noise_pred=True, v_pred_like_loss=0.3)
    # sd-scripts: loss·scale, then loss + loss/scale·k
    expected = scale * (1 + 0.3 / scale)
    assert torch.allclose(timestep_weights(scheduler, t, both, "v_prediction").double(), expected, rtol=1e-5)


def test_weights_multiply_min_snr_and_debiased_together() -> None:
    scheduler, t = _scheduler(), torch.tensor([3, 700])
    loss = LossConfig(min_snr_gamma=5.0, debiased_estimation_loss=True)
    expected = min_snr_weights(scheduler, t, 5.0, "epsilon") * debiased_weights(scheduler, t, "epsilon")
    assert torch.allclose(timestep_weights(scheduler, t, loss, "epsilon"), expected)
    assert torch.equal(timestep_weights(scheduler, t, LossConfig(), "epsilon"), torch.ones(2))


def test_zero_terminal_snr_ends_at_alpha_bar_zero_and_keeps_the_first() -> None:
    scheduler = _scheduler()
    before = scheduler.alphas_cumprod.clone()
    rescale_zero_terminal_snr(scheduler)
    after = scheduler.alphas_cumprod
    assert after[-1].item() == 0.0
    assert after[0].item() == pytest.approx(before[0].item(), rel=1e-6)
    assert bool((after[1:] <= after[:-1]).all())  # still a noising schedule
    root = before.double().sqrt()  # the paper's rule: √ᾱ shifted to end at 0, scaled to start where it did
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    assert torch.allclose(after.double(), expected, atol=1e-6)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    assert torch.allclose(zero_terminal_snr_betas(_scheduler().betas), reference.betas, rtol=1e-3)  # float32 there


def test_v_target_under_zero_terminal_snr_is_minus_the_latents_at_the_last_step() -> None:
    """At t = 999 ᾱ = 0: the input is pure noise and v = √ᾱ·ε − √(1−ᾱ)·x₀ = −x₀."""
    from train.loop import training_step

    scheduler = _scheduler()
    rescale_zero_terminal_snr(scheduler)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = {}

    def unet(noisy, timesteps, **cond):  # the UNet predicts 0, so the loss is the target's mean square
        seen.update(noisy=noisy, timesteps=timesteps)
        return SimpleNamespace(sample=torch.zeros_like(noisy))

    base = SimpleNamespace(noise_scheduler=scheduler, is_sdxl=False)
    batch = SimpleNamespace(latents=latents, prompt=SimpleNamespace(embeds=torch.zeros(2, 3, 8), pooled=None),
                            time_ids=None, weights=torch.ones(2), mask=None)
    loss = training_step(base, unet, batch, prediction_type="v_prediction",
                         loss=LossConfig(zero_terminal_snr=True, min_timestep=999, max_timestep=1000),
                         generator=torch.Generator().manual_seed(0))
    assert seen["timesteps"].tolist() == [999, 999]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen["noisy"], noise, atol=1e-6)
    assert loss.item() == pytest.approx(latents.pow(2).mean().item(), rel=1e-5)


def test_multires_noise_adds_each_level_with_its_discount_at_unit_std() -> None:
    base = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    found = pyramid_noise(base.clone(), 1, 0.3, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand((), generator=g)  # the level's size ratio (level 0: full size whatever it is)
    level0 = torch.randn(2, 4, 16, 16, generator=g)
    expected = base + level0
    assert torch.allclose(found, expected / expected.std(), atol=1e-6)
    deep = pyramid_noise(base.clone(), 10, 0.3, torch.Generator().manual_seed(5))
    assert deep.std().item() == pytest.approx(1.0, abs=1e-5) and not torch.allclose(deep, found)


def test_noise_offset_random_strength_draws_a_strength_below_the_offset() -> None:
    latents = torch.zeros(2, 4, 4, 4)
    loss = LossConfig(noise_offset=0.5, noise_offset_random_strength=True)
    found = sample_noise(latents, loss, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise, offset = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 1, 1, generator=g)
    strength = torch.rand(1, generator=g) * 0.5
    assert 0 <= strength.item() < 0.5
    assert torch.allclose(found, noise + strength * offset)


@pytest.mark.parametrize("random_strength", [False, True])
def test_input_perturbation_goes_into_the_input_not_the_target(random_strength: bool) -> None:
    scheduler, latents = _scheduler(), torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(9))
    noise, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    loss = LossConfig(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=random_strength)
    found = noisy_latents(scheduler, latents, noise, t, loss, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    strength = torch.rand(1, generator=g) * 0.1 if random_strength else 0.1
    extra = torch.randn(2, 4, 4, 4, generator=g)
    assert torch.allclose(found, scheduler.add_noise(latents, noise + strength * extra, t))


@pytest.mark.parametrize(("low", "high", "allowed"), [(None, None, range(0, 1000)), (200, 300, range(200, 300)),
                                                      (500, 500, [500])])
def test_timesteps_stay_in_their_range(low: int | None, high: int | None, allowed) -> None:
    found = sample_timesteps(20000, LossConfig(min_timestep=low, max_timestep=high), 1000,
                             torch.Generator().manual_seed(0), "cpu")
    assert set(found.tolist()) <= set(allowed) and len(set(found.tolist())) == len(allowed)


def test_a_zero_mask_gives_zero_loss_and_zero_gradient() -> None:
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    loss = per_sample_loss(prediction, target, LossConfig(), _scheduler(), torch.tensor([5, 50]),
                           mask=torch.zeros(2, 1, 64, 64)).mean()
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(prediction.grad) == 0


def test_the_mask_is_area_averaged_to_the_latents_and_ones_change_nothing() -> None:
    loss = torch.ones(1, 4, 2, 2)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0
    mask[..., 2:, 2:] = 0.5
    assert masked(loss, mask)[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.5]]
    prediction, target = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([1, 2])
    plain = per_sample_loss(prediction, target, LossConfig(), _scheduler(), t)
    assert torch.allclose(per_sample_loss(prediction, target, LossConfig(), _scheduler(), t,
                                          mask=torch.ones(2, 1, 32, 32)), plain)


@pytest.mark.parametrize(("settings", "message"), [
    ({"zero_terminal_snr": True, "prediction_type": "epsilon"}, "zero_terminal_snr needs a v-prediction model"),
    ({"loss_type": "l3"}, "loss_type 'l3' is not one of"),
    ({"huber_c": 0}, "huber_c must be above 0"),
    ({"min_timestep": 800, "max_timestep": 100}, "0 ≤ min ≤ max ≤ 1000"),
    ({"ip_noise_gamma_random_strength": True}, "ip_noise_gamma, which is not set"),
    ({"multires_noise_iterations": 0}, "multires_noise_iterations must be at least 1"),
    ({"mask_missing": "skip"}, "mask_missing 'skip' is not one of"),
])
def test_bad_loss_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_config(None, settings)
    assert "\n" not in info.value.message


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def manifest(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(testdata, tmp_path_factory.mktemp("losses") / "ds")


E2E = {
    "sd15": {"loss_type": "huber", "huber_schedule": "exponential", "debiased_estimation_loss": True,
             "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True, "multires_noise_iterations": 6,
             "multires_noise_discount": 0.3, "noise_offset": 0.05, "noise_offset_random_strength": True,
             "v_pred_like_loss": 0.2, "min_timestep": 100, "max_timestep": 900},
    "sd2v": {"zero_terminal_snr": True, "scale_v_pred_loss_like_noise_pred": True, "loss_type": "smooth_l1",
             "min_snr_gamma": 5.0, "debiased_estimation_loss": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(E2E))
def test_every_option_trains_the_tiny_models(request: pytest.FixtureRequest, manifest: Path, tmp_path: Path,
                                             family: str) -> None:
    from train.export import read_lora
    from train.loop import train
    from train.prepare import load_model

    model = request.getfixturevalue(f"tiny_{family}")
    config = load_config(None, {"base": str(model), "output_dir": str(tmp_path), "max_steps": 2, "batch_size": 2,
                                "rank": 4, "lr": 1e-3, **E2E[family]})
    base = load_model(config, "cpu")
    result = train(manifest, config, base=base)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert any(p.abs().sum() > 0 for n, p in base.unet.named_parameters() if "lora_B" in n)
    metadata = read_lora(result.lora_files[0]).metadata
    if family == "sd2v":
        assert base.noise_scheduler.alphas_cumprod[-1].item() == 0.0
        assert metadata["ss_zero_terminal_snr"] == "True" and metadata["modelspec.prediction_type"] == "v"
    else:
        assert metadata["ss_loss_type"] == "huber" and metadata["ss_huber_schedule"] == "exponential"


def test_zero_terminal_snr_on_an_epsilon_base_stops_before_loading(manifest: Path, tmp_path: Path,
                                                                    tiny_sd15: Path) -> None:
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd15), "--zero-terminal-snr",
                                          "--output", str(tmp_path / "out")])
    assert result.exit_code == 2  # a usage error
    assert "zero_terminal_snr needs a v-prediction model" in result.output and "predicts epsilon" in result.output
    assert not (tmp_path / "out").exists()
