"""Ready the base model and accelerator for training: dtypes, attention kernels, gradient checkpointing.

Why apart from train.model: model.py loads a base for anyone (training, sampling, generate); this
file applies the training settings to it.
"""

from __future__ import annotations

from typing import Any

from prep.errors import UsageError
from train.config import TrainConfig


def weight_dtype(mixed_precision: str) -> Any:
    """Frozen weights in the mixed-precision dtype; LoRA weights and the VAE always stay fp32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(mixed_precision=config.run.mixed_precision)


def load_model(config: TrainConfig, device: Any) -> Any:
    """The base model with UNet and text encoders in the training dtype and the VAE in fp32 (no NaN latents)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from train.model import load_base

    if not config.model.base:
        raise UsageError("no base model given",
                         hint="pass --base MODEL (diffusers folder, .safetensors file or hub id)")
    prediction = None if config.model.prediction_type == "auto" else config.model.prediction_type
    base = load_base(config.model.base, allow_pickle=config.model.allow_pickle, device=device,
                     prediction_type=prediction)
    dtype = weight_dtype(config.run.mixed_precision)
    for module in (base.unet, *base.text_encoders):
        if module.dtype != dtype:
            module.to(dtype=dtype)
    if base.vae.dtype != torch.float32:
        base.vae.to(dtype=torch.float32)
    base.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA: flash/memory-efficient kernels
    if config.run.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if config.network.train_text_encoder:
            for encoder in base.text_encoders:
                encoder.gradient_checkpointing_enable()
    return base

