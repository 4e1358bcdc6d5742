"""The noise of one step and the noise schedule: offsets, multi-resolution noise, input perturbation,
the timestep range, and zero terminal SNR.

Why these follow sd-scripts' order (train_util.get_noise_noisy_latents_and_timesteps): noise, its
offset, multi-resolution noise, then the timesteps, then the perturbation added only to the noisy
input (the target stays the unperturbed noise). Every draw comes from the step's generator, so a
resumed run replays them; with none of the options set the draws are the plain run's.

Zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sampling Steps Are
Flawed"): √ᾱ is shifted so the last timestep's is 0 and scaled so the first keeps its value; the
last timestep is then pure noise, which only a v-prediction model can learn from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.config import LossConfig, TrainConfig


def zero_terminal_snr_betas(betas: Any) -> Any:
    """The betas rescaled so ᾱ at the last timestep is exactly 0 and ᾱ at the first is unchanged."""
    import torch

    root = torch.cumprod(1 - betas.double(), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    bar = root ** 2
    alphas = torch.cat([bar[:1], bar[1:] / bar[:-1]])
    return (1 - alphas).to(betas.dtype)


def rescale_zero_terminal_snr(scheduler: Any) -> None:
    """Give a DDPM-style scheduler zero-terminal-SNR betas, alphas and ᾱ (what add_noise and
    get_velocity read). Idempotent."""
    import torch

    if getattr(scheduler, "loraprep_zero_terminal_snr", False):
        return
    betas = zero_terminal_snr_betas(scheduler.betas)
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.loraprep_zero_terminal_snr = True


def sampling_scheduler_for_zero_terminal_snr(scheduler: Any) -> Any:
    """The model's sampling scheduler with rescaled betas and 'trailing' timesteps (the paper's
    sampling fix), when its class has those options; else the scheduler unchanged."""
    import inspect

    accepted = inspect.signature(type(scheduler).__init__).parameters
    if "rescale_betas_zero_snr" not in accepted:
        return scheduler
    options = {"rescale_betas_zero_snr": True}
    if "timestep_spacing" in accepted:
        options["timestep_spacing"] = "trailing"
    return type(scheduler).from_config(scheduler.config, **options)


def uses_zero_terminal_snr(config: TrainConfig) -> bool:
    """--zero-terminal-snr, or a base checkpoint that says it was trained so (a `ztsnr` key), unless
    the run was told to train it as epsilon."""
    from train.prediction import checkpoint_hints

    if config.loss.zero_terminal_snr:
        return True
    return config.model.prediction_type != "epsilon" and checkpoint_hints(config.model.base).zero_terminal_snr


def prepare_noise_schedule(base: Any, config: TrainConfig) -> bool:
    """Apply zero terminal SNR to the base model's training and sampling schedulers when the run
    uses it; returns whether it does."""
    if not uses_zero_terminal_snr(config):
        return False
    rescale_zero_terminal_snr(base.noise_scheduler)
    if not getattr(base.scheduler, "loraprep_zero_terminal_snr", False):
        base.scheduler = sampling_scheduler_for_zero_terminal_snr(base.scheduler)
        base.scheduler.loraprep_zero_terminal_snr = True
    return True


# ---------------------------------------------------------------- one step's draws


def pyramid_noise(noise: Any, iterations: int, discount: float, generator: Any) -> Any:
    """Multi-resolution ("pyramid") noise: at each level i, noise at 1/rⁱ of the size (r drawn in
    [2, 4)) upsampled bilinearly and weighted discountⁱ is added, down to 1 pixel; the sum is
    rescaled to unit standard deviation."""
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = noise.shape
    for level in range(iterations):
        ratio = float(torch.rand((), generator=generator, device=noise.device)) * 2 + 2
        h, w = max(1, int(height / ratio ** level)), max(1, int(width / ratio ** level))
        coarse = torch.randn((batch, channels, h, w), generator=generator, device=noise.device, dtype=noise.dtype)
        noise = noise + F.interpolate(coarse, size=(height, width), mode="bilinear") * discount ** level
        if h == 1 or w == 1:
            break
    return noise / noise.std()


def _strength(value: float, random_strength: bool, like: Any, generator: Any) -> Any:
    """The option's value, or with its random-strength switch a draw in [0, value) for the batch."""
    import torch

    if not random_strength:
        return value
    return torch.rand((1,), generator=generator, device=like.device, dtype=like.dtype) * value


def sample_noise(latents: Any, loss: LossConfig, generator: Any) -> Any:
    """Gaussian noise for the latents, with the noise offset and multi-resolution noise applied."""
    import torch

    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if loss.noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                             device=latents.device, dtype=latents.dtype)
        strength = _strength(loss.noise_offset, loss.noise_offset_random_strength, latents, generator)
        noise = noise + strength * offset
    if loss.multires_noise_iterations:
        noise = pyramid_noise(noise, loss.multires_noise_iterations, loss.multires_noise_discount, generator)
    return noise


def sample_timesteps(count: int, loss: LossConfig, num_train_timesteps: int, generator: Any, device: Any) -> Any:
    """Timesteps uniform in [min_timestep, max_timestep); all equal to it when min = max."""
    import torch

    low = loss.min_timestep or 0
    high = num_train_timesteps if loss.max_timestep is None else min(loss.max_timestep, num_train_timesteps)
    if low >= high:
        return torch.full((count,), min(low, num_train_timesteps - 1), device=device, dtype=torch.long)
    return torch.randint(low, high, (count,), generator=generator, device=device)


def noisy_latents(scheduler: Any, latents: Any, noise: Any, timesteps: Any, loss: LossConfig, generator: Any) -> Any:
    """The UNet's input: latents noised to each timestep, with input perturbation (ip_noise_gamma)
    added to the noise that goes in, not to the target."""
    import torch

    if loss.ip_noise_gamma:
        strength = _strength(loss.ip_noise_gamma, loss.ip_noise_gamma_random_strength, latents, generator)
        extra = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + strength * extra
    return scheduler.add_noise(latents, noise, timesteps)
