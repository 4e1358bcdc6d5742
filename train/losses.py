"""The loss of one step: its element-wise form (l2, l1, Huber), the subject mask, and per-timestep weights.

Why sd-scripts' formulas exactly (library/custom_train_functions.py, train_util.conditional_loss):
a config written for sd-scripts must train the same LoRA here, so each option means what it means
there, including its clamps (SNR capped at 1000 where it would be infinite at timestep 0).

All the weights are factors on each sample's loss, so their order does not matter:
min-SNR-γ, `scale_v_pred_loss_like_noise_pred`, `v_pred_like_loss` (loss + loss/scale·k is
loss·(1 + k/scale)), `debiased_estimation_loss`. No torch import at load time: `train.config`
validates settings with `check_loss_settings`.
"""

from __future__ import annotations

import math
from typing import Any

from prep.errors import UsageError

LossConfig = Any  # train.config.LossConfig, which imports this module (the trainer's imports run one way)

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
MASK_MISSING = ("error", "unmasked")
SNR_CAP = 1000.0  # sd-scripts: the SNR at timestep 0 is ~infinite; weights read it capped here
ZTSNR_WITH_EPSILON = ("zero_terminal_snr needs a v-prediction model: with epsilon prediction the last timestep "
                      "(pure noise) has nothing to predict")


def check_loss_settings(loss: LossConfig, prediction_type: str) -> None:
    """Everything about the loss and noise options that can be checked without a model."""
    def bad(text: str, hint: str | None = None) -> UsageError:
        return UsageError(text, hint=hint)

    if loss.loss_type not in LOSS_TYPES:
        raise bad(f"loss_type '{loss.loss_type}' is not one of: {', '.join(LOSS_TYPES)}")
    if loss.huber_schedule not in HUBER_SCHEDULES:
        raise bad(f"huber_schedule '{loss.huber_schedule}' is not one of: {', '.join(HUBER_SCHEDULES)}")
    if not (math.isfinite(loss.huber_c) and 0 < loss.huber_c <= 1):
        raise bad(f"huber_c must be above 0 and at most 1 (0.1 is sd-scripts' default), got {loss.huber_c}")
    if not (math.isfinite(loss.huber_scale) and loss.huber_scale > 0):
        raise bad(f"huber_scale must be a positive number, got {loss.huber_scale}")
    low = 0 if loss.min_timestep is None else loss.min_timestep
    high = 1000 if loss.max_timestep is None else loss.max_timestep
    if low < 0 or high > 1000 or low > high or (low == high and high >= 1000):
        raise bad(f"min_timestep/max_timestep {low}/{high} must satisfy 0 ≤ min ≤ max ≤ 1000 (max excluded)")
    for name in ("ip_noise_gamma", "v_pred_like_loss"):
        value = getattr(loss, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise bad(f"{name} must be 0 or more, got {value}")
    if loss.multires_noise_iterations is not None and loss.multires_noise_iterations < 1:
        raise bad(f"multires_noise_iterations must be at least 1 (6–10 is typical), got {loss.multires_noise_iterations}")
    if not (math.isfinite(loss.multires_noise_discount) and 0 < loss.multires_noise_discount <= 1):
        raise bad(f"multires_noise_discount must be above 0 and at most 1, got {loss.multires_noise_discount}")
    if loss.ip_noise_gamma_random_strength and not loss.ip_noise_gamma:
        raise bad("ip_noise_gamma_random_strength draws a strength up to ip_noise_gamma, which is not set",
                  hint="add --ip-noise-gamma 0.1, or drop --ip-noise-gamma-random-strength")
    if loss.noise_offset_random_strength and not loss.noise_offset:
        raise bad("noise_offset_random_strength draws a strength up to noise_offset, which is not set",
                  hint="add --noise-offset 0.05, or drop --noise-offset-random-strength")
    if loss.mask_missing not in MASK_MISSING:
        raise bad(f"mask_missing '{loss.mask_missing}' is not one of: {', '.join(MASK_MISSING)}")
    if loss.zero_terminal_snr and prediction_type == "epsilon":
        raise bad(ZTSNR_WITH_EPSILON, hint="train a v-prediction model (--prediction-type v_prediction), "
                                           "or drop --zero-terminal-snr")
    if loss.zero_terminal_snr and loss.v_pred_like_loss:
        raise bad("v_pred_like_loss divides by the SNR, which zero_terminal_snr makes 0 at the last timestep",
                  hint="drop one of --v-pred-like-loss and --zero-terminal-snr")
    if loss.scale_v_pred_loss_like_noise_pred and prediction_type == "epsilon":
        raise bad("scale_v_pred_loss_like_noise_pred scales a v-prediction loss; this model predicts epsilon",
                  hint="drop --scale-v-pred-loss-like-noise-pred")


def check_prediction(loss: LossConfig, prediction_type: str) -> None:
    """The checks that need the model's prediction type, once `auto` is resolved."""
    if loss.zero_terminal_snr and prediction_type == "epsilon":
        raise UsageError(ZTSNR_WITH_EPSILON + " (the base model predicts epsilon)",
                         hint="use a v-prediction base, or drop --zero-terminal-snr")
    if loss.scale_v_pred_loss_like_noise_pred and prediction_type == "epsilon":
        raise UsageError("scale_v_pred_loss_like_noise_pred scales a v-prediction loss; the base model predicts "
                         "epsilon", hint="drop --scale-v-pred-loss-like-noise-pred")


# ---------------------------------------------------------------- per timestep


def snr(scheduler: Any, timesteps: Any) -> Any:
    """Signal-to-noise ratio ᾱ/(1-ᾱ) of each timestep (0 at the last one under zero terminal SNR)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)


def min_snr_weights(scheduler: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    """Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v."""
    import torch

    value = snr(scheduler, timesteps)
    clipped = torch.clamp(value, max=gamma)
    return clipped / (value + 1) if prediction_type == "v_prediction" else clipped / value


def snr_scale(scheduler: Any, timesteps: Any) -> Any:
    """SNR/(SNR+1) with the SNR capped at 1000: how much smaller a v loss is than the ε loss."""
    value = snr(scheduler, timesteps).clamp(max=SNR_CAP)
    return value / (value + 1)


def debiased_weights(scheduler: Any, timesteps: Any, prediction_type: str) -> Any:
    """Debiased estimation (Yu et al. 2023): 1/√SNR for ε, 1/(SNR+1) for v, the SNR capped at 1000."""
    value = snr(scheduler, timesteps).clamp(max=SNR_CAP)
    return 1 / (value + 1) if prediction_type == "v_prediction" else 1 / value.sqrt()


def timestep_weights(scheduler: Any, timesteps: Any, loss: LossConfig, prediction_type: str) -> Any:
    """The product of every per-timestep weight the settings ask for (1 for each sample when none)."""
    import torch

    weights = torch.ones(timesteps.shape, device=timesteps.device)
    if loss.min_snr_gamma:
        weights = weights * min_snr_weights(scheduler, timesteps, loss.min_snr_gamma, prediction_type)
    if loss.scale_v_pred_loss_like_noise_pred:
        weights = weights * snr_scale(scheduler, timesteps)
    if loss.v_pred_like_loss:
        weights = weights * (1 + loss.v_pred_like_loss / snr_scale(scheduler, timesteps))
    if loss.debiased_estimation_loss:
        weights = weights * debiased_weights(scheduler, timesteps, prediction_type)
    return weights


def huber_threshold(scheduler: Any, timesteps: Any, loss: LossConfig) -> Any:
    """Each sample's Huber c: constant c·scale; exponential e^(-αt)·scale with α = -ln(c)/T (c at
    t = T, 1 at t = 0); snr (1-c)/(1+σ)² + c with σ = √((1-ᾱ)/ᾱ) (sd-scripts applies no scale there)."""
    import torch

    if loss.huber_schedule == "constant":
        return torch.full(timesteps.shape, loss.huber_c * loss.huber_scale, device=timesteps.device)
    if loss.huber_schedule == "exponential":
        rate = -math.log(loss.huber_c) / scheduler.config.num_train_timesteps
        return torch.exp(-rate * timesteps.float()) * loss.huber_scale
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1 - alphas) / alphas) ** 0.5
    return (1 - loss.huber_c) / (1 + sigmas) ** 2 + loss.huber_c


# ---------------------------------------------------------------- per element


def elementwise_loss(prediction: Any, target: Any, loss_type: str, huber_c: Any = None) -> Any:
    """sd-scripts' conditional_loss without reduction: l2 (squared error), l1, huber
    2c(√(d²+c²) - c), smooth_l1 2(√(d²+c²) - c), with c per sample."""
    import torch.nn.functional as F

    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = huber_c.view(-1, *([1] * (prediction.dim() - 1)))
    smooth = 2 * (((prediction - target) ** 2 + c ** 2).sqrt() - c)
    return smooth * c if loss_type == "huber" else smooth


def masked(loss: Any, mask: Any) -> Any:
    """The element-wise loss times the mask brought to its size by area averaging (sd-scripts'
    apply_masked_loss): masked-out latents add nothing, and the mean is still over every element."""
    import torch.nn.functional as F

    return loss * F.interpolate(mask.to(loss.dtype), size=loss.shape[2:], mode="area")


def per_sample_loss(prediction: Any, target: Any, loss: LossConfig, scheduler: Any, timesteps: Any,
                    mask: Any = None) -> Any:
    """Each sample's mean loss (before the per-timestep and per-image weights)."""
    huber_c = huber_threshold(scheduler, timesteps, loss) if loss.loss_type in ("huber", "smooth_l1") else None
    element = elementwise_loss(prediction.float(), target.float(), loss.loss_type, huber_c)
    if mask is not None:
        element = masked(element, mask)
    return element.mean(dim=tuple(range(1, element.dim())))


def loss_metadata(loss: LossConfig, base: Any) -> dict[str, str]:
    """The `ss_*` keys sd-scripts writes for these options (only those in use), so a LoRA's
    metadata says how it was trained; zero terminal SNR also when the checkpoint asked for it."""
    ztsnr = loss.zero_terminal_snr or bool(getattr(base.noise_scheduler, "loraprep_zero_terminal_snr", False))
    found: dict[str, Any] = {
        "ss_zero_terminal_snr": ztsnr or None,
        "ss_min_timestep": loss.min_timestep, "ss_max_timestep": loss.max_timestep,
        "ss_loss_type": loss.loss_type if loss.loss_type != "l2" else None,
        "ss_debiased_estimation": loss.debiased_estimation_loss or None,
        "ss_ip_noise_gamma": loss.ip_noise_gamma,
        "ss_ip_noise_gamma_random_strength": loss.ip_noise_gamma_random_strength or None,
        "ss_multires_noise_iterations": loss.multires_noise_iterations,
        "ss_noise_offset_random_strength": loss.noise_offset_random_strength or None,
        "ss_v_pred_like_loss": loss.v_pred_like_loss,
        "ss_scale_v_pred_loss_like_noise_pred": loss.scale_v_pred_loss_like_noise_pred or None,
        "ss_masked_loss": (loss.masked_loss or loss.alpha_mask) or None,
    }
    if loss.loss_type in ("huber", "smooth_l1"):
        found.update(ss_huber_schedule=loss.huber_schedule, ss_huber_c=loss.huber_c, ss_huber_scale=loss.huber_scale)
    if loss.multires_noise_iterations:
        found["ss_multires_noise_discount"] = loss.multires_noise_discount
    return {key: str(value) for key, value in found.items() if value is not None}
