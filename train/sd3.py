"""Stable Diffusion 3 / 3.5 (Medium, Large): the MMDiT transformer, three text encoders, flow matching.

Why its own module: SD3 shares the trainer's data, caches, network and export with SD1/SDXL, but its
denoiser, conditioning and loss differ. The trainer keeps one code path and asks here at the few
places where the family matters (`train.model` loads, `train.loop` steps, `train.conditioning`
encodes). The BaseModel's `unet` slot holds the transformer, so the rest of the trainer (adapters,
checkpoints, parking, sampling) handles it like a UNet.

- Conditioning as diffusers' StableDiffusion3Pipeline computes it: CLIP-L and CLIP-G penultimate
  hidden states concatenated on the feature axis and zero-padded to T5's width, T5's last hidden state
  appended on the token axis ([B, 77 + t5_max_length, D]); pooled = CLIP-L ⊕ CLIP-G projections.
  `clip_skip` counts like SDXL's (1 = the penultimate layer the pipeline uses).
- Loss: rectified flow. x_σ = (1 − σ)·x + σ·ε, the model predicts the velocity ε − x. σ is drawn as
  diffusers' SD3 LoRA example draws it: u from the weighting scheme's density (logit-normal by
  default; `mode`; uniform for the others), the scheduler's (shifted) timestep at index u·1000, and
  the loss weighted per scheme (`sigma_sqrt` 1/σ², `cosmap`, else 1). With `precondition_outputs`
  (the example's default) the prediction is turned into an estimate of x (x_σ − σ·v) and compared with x.
- T5 never trains (its outputs are cached with the CLIP ones); LoRA goes on the transformer's joint
  attention (image and context streams) and, with --train-text-encoder, on CLIP-L/G.
"""

from __future__ import annotations

import math
from typing import Any

from prep.errors import ModelMismatch, UsageError

DEFAULT_T5_MAX_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length
ATTN = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
MODULATION = ("norm1.linear", "norm1_context.linear")
PRESET_SUFFIXES: dict[str, tuple[str, ...]] = {"attn": ATTN, "attn-mlp": ATTN + MLP, "full": ATTN + MLP + MODULATION}
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def is_mmdit(model: Any) -> bool:
    """Whether a denoiser is SD3's MMDiT (joint transformer blocks) rather than a UNet."""
    return hasattr(model, "transformer_blocks") and hasattr(model.config, "joint_attention_dim")


def size_label(transformer_config: Any) -> str:
    """"medium" or "large" by depth (3.5 Medium: 24 joint blocks, Large: 38); tiny test models are medium."""
    return "large" if int(transformer_config.get("num_layers", 0)) >= 38 else "medium"


# ---------------------------------------------------------------- loading


def pipeline_parts(pipe: Any, source: str) -> dict[str, Any]:
    """BaseModel fields from a loaded StableDiffusion3Pipeline (the transformer in the `unet` slot);
    train.model adds the ids."""
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    if any(m is None for m in (*encoders, *tokenizers, pipe.vae, pipe.transformer)):
        raise ModelMismatch(f"{source} lacks a component (SD3 needs transformer, vae, CLIP-L, CLIP-G and T5 "
                            "text encoders and their tokenizers)",
                            hint="pass a complete SD3 model; for a single file without text encoders pass "
                                 "--base-config DIR (a diffusers SD3 folder holding them)")
    tokenizers[2].model_max_length = DEFAULT_T5_MAX_LENGTH
    for module in (pipe.transformer, pipe.vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    return dict(family="sd3", prediction_type="flow", unet=pipe.transformer, vae=pipe.vae, text_encoders=encoders,
                tokenizers=tokenizers, noise_scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config),
                scheduler=pipe.scheduler, pipeline_class=type(pipe))


# where an original-layout SD3 file keeps each text encoder, when it holds them
SINGLE_FILE_ENCODERS = {"text_encoder": "text_encoders.clip_l.", "text_encoder_2": "text_encoders.clip_g.",
                        "text_encoder_3": "text_encoders.t5xxl."}


def missing_text_encoders(keys: list[str], config: Any, dtype: Any) -> dict[str, Any]:
    """The text encoders a single SD3 file lacks (SD3.5 Large ships the MMDiT and VAE only), loaded
    from the diffusers folder `config`, as `from_single_file` keyword arguments."""
    from pathlib import Path

    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    found = {}
    for name, prefix in SINGLE_FILE_ENCODERS.items():
        if not any(k.startswith(prefix) for k in keys):
            model_class = T5EncoderModel if name == "text_encoder_3" else CLIPTextModelWithProjection
            if not (Path(config) / name).is_dir():
                raise ModelMismatch(f"the SD3 file holds no {name} and --base-config {config} has none either",
                                    hint="pass a complete diffusers SD3 folder as --base-config")
            found[name] = model_class.from_pretrained(str(Path(config) / name), dtype=dtype)
    return found


def pipeline(base: Any, **overrides: Any) -> Any:
    """A StableDiffusion3Pipeline sharing the base model's modules (no copy), for sampling."""
    parts: dict[str, Any] = dict(transformer=base.unet, vae=base.vae, scheduler=base.scheduler)
    for index, (encoder, tokenizer) in enumerate(zip(base.text_encoders, base.tokenizers, strict=True)):
        suffix = f"_{index + 1}" if index else ""
        parts.update({f"text_encoder{suffix}": encoder, f"tokenizer{suffix}": tokenizer})
    parts.update(overrides)
    pipe = base.pipeline_class(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_settings(config: Any) -> None:
    """Settings that mean nothing for a flow-matching MMDiT are refused rather than silently ignored."""
    refused = {
        "prediction_type": config.model.prediction_type != "auto",
        "min_snr_gamma": config.loss.min_snr_gamma is not None,
        "noise_offset": bool(config.loss.noise_offset),
        "conv_dim": config.network.conv_dim > 0,
        "block learning-rate weights": any(v is not None for v in (
            config.network.down_lr_weight, config.network.mid_lr_weight, config.network.up_lr_weight,
            config.network.block_lr_weights)),
        # sd-scripts' loss and noise variants (train.losses, train.noise) are written for the
        # ε/v objective of the UNet models; the flow-matching step uses none of them
        "zero_terminal_snr": config.loss.zero_terminal_snr,
        "min/max_timestep": config.loss.min_timestep is not None or config.loss.max_timestep is not None,
        "loss_type": config.loss.loss_type != "l2",
        "debiased_estimation_loss": config.loss.debiased_estimation_loss,
        "ip_noise_gamma": config.loss.ip_noise_gamma is not None,
        "multires_noise_iterations": config.loss.multires_noise_iterations is not None,
        "noise_offset_random_strength": config.loss.noise_offset_random_strength,
        "v_pred_like_loss": config.loss.v_pred_like_loss is not None,
        "scale_v_pred_loss_like_noise_pred": config.loss.scale_v_pred_loss_like_noise_pred,
        "masked_loss / alpha_mask": config.loss.masked_loss or config.loss.alpha_mask,
    }
    named = [name for name, bad in refused.items() if bad]
    if named:
        raise UsageError(f"{', '.join(named)}: not for SD3 (a flow-matching transformer has no such setting)",
                         hint="drop it; SD3's loss is shaped by --weighting-scheme, --logit-mean/--logit-std "
                              "and --mode-scale")


def check_bucket(bucket: tuple[int, int]) -> None:
    """SD3 patches 2×2 latents of 8× downsampled pixels: image sides must be multiples of 16."""
    if bucket[0] % 16 or bucket[1] % 16:
        raise UsageError(f"bucket {bucket[0]}×{bucket[1]} does not fit SD3's 16-pixel patches",
                         hint="bucket for SD3 at 1024 with step 64: loraprep bucket DIR --resolution 1024 "
                              "--step 64, then loraprep manifest DIR")


# ---------------------------------------------------------------- adapters


def targets(transformer: Any, preset: str) -> tuple[str, ...]:
    """Full module names of the transformer blocks' Linear layers the preset reaches."""
    import torch

    suffixes = PRESET_SUFFIXES[preset]
    found = tuple(name for name, module in transformer.named_modules()
                  if name.startswith("transformer_blocks.") and isinstance(module, torch.nn.Linear)
                  and any(name.endswith("." + s) for s in suffixes))
    if not found:
        raise UsageError(f"preset '{preset}' matched no layer of this SD3 transformer")
    return found


def keep_fp32_parts(encoder: Any) -> None:
    """Cast back to fp32 the layers a transformers model must keep there (T5's `wo`, which overflows
    in fp16), after the whole model was cast to the training dtype."""
    names = tuple(getattr(encoder, "_keep_in_fp32_modules", None) or ())
    for path, module in encoder.named_modules():
        if names and path.rsplit(".", 1)[-1] in names:
            module.float()


def trains_text_encoder(encoder: Any) -> bool:
    """CLIP-L/G can take LoRA; T5 stays frozen (as in diffusers' example and sd-scripts)."""
    return getattr(getattr(encoder, "config", None), "model_type", "") != "t5"


# ---------------------------------------------------------------- conditioning


def encode_t5(encoders: list[Any], token_ids: list[Any]) -> Any:
    """T5's last hidden state [B, T, D_t5] (never trained, so cacheable while CLIP-L/G train)."""
    return encoders[2](token_ids[2].to(encoders[2].device))[0]


def encode_prompt(encoders: list[Any], token_ids: list[Any], *, clip_skip: int = 1, t5: Any = None) -> tuple[Any, Any]:
    """(embeds [B, 77 + T, D_t5], pooled [B, P_l + P_g]) as StableDiffusion3Pipeline.encode_prompt;
    `t5`: T5's outputs already computed (cached), else T5 runs."""
    import torch
    import torch.nn.functional as F

    hidden, pooled = [], []
    for encoder, ids in zip(encoders[:2], token_ids[:2], strict=True):
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-(clip_skip + 1)])
        pooled.append(output.text_embeds)
    device = hidden[0].device
    clip = torch.cat([h.to(device) for h in hidden], dim=-1)
    t5 = (encode_t5(encoders, token_ids) if t5 is None else t5).to(device=device, dtype=clip.dtype)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat([p.to(device) for p in pooled], dim=-1)


# ---------------------------------------------------------------- the flow-matching loss


def timestep_density(scheme: str, batch: int, *, logit_mean: float, logit_std: float, mode_scale: float,
                     generator: Any, device: Any) -> Any:
    """u ∈ [0, 1] per sample: sigmoid(N(mean, std)) for logit_normal, the SD3 paper's `mode` density
    (1 − u − s·(cos²(πu/2) − 1 + u)), else uniform."""
    import torch

    if scheme == "logit_normal":
        normal = torch.randn((batch,), generator=generator, device=device) * logit_std + logit_mean
        return torch.sigmoid(normal)
    u = torch.rand((batch,), generator=generator, device=device)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def loss_weighting(scheme: str, sigmas: Any) -> Any:
    """Per-sample loss weight: 1/σ² (sigma_sqrt), 2/(π(1 − 2σ + 2σ²)) (cosmap), else 1."""
    import torch

    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def sample_sigmas(scheduler: Any, u: Any) -> tuple[Any, Any]:
    """The scheduler's (timesteps, sigmas) at index ⌊u·num_train_timesteps⌋ of its training schedule."""
    count = int(scheduler.config.num_train_timesteps)
    indices = (u * count).long().clamp(0, len(scheduler.timesteps) - 1).cpu()
    return scheduler.timesteps[indices].to(u.device), scheduler.sigmas[indices].to(u.device)


def training_step(base: Any, transformer: Any, batch: Any, *, loss: Any, generator: Any) -> Any:
    """Noise → σ → interpolate → velocity prediction → weighted MSE. Returns the batch's scalar loss."""
    import torch

    latents = batch.latents
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    u = timestep_density(loss.weighting_scheme, latents.shape[0], logit_mean=loss.logit_mean,
                         logit_std=loss.logit_std, mode_scale=loss.mode_scale, generator=generator,
                         device=latents.device)
    timesteps, sigmas = sample_sigmas(base.noise_scheduler, u)
    sigmas = sigmas.to(latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    prediction = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=batch.prompt.embeds,
                             pooled_projections=batch.prompt.pooled, return_dict=False)[0]
    if loss.precondition_outputs:
        prediction, target = prediction * (-sigmas) + noisy, latents
    else:
        target = noise - latents
    weighting = loss_weighting(loss.weighting_scheme, sigmas)
    per_sample = (weighting.float() * (prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (per_sample * batch.weights).mean()
