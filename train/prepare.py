"""Ready the base model and accelerator for training: dtypes, attention kernels, gradient checkpointing.

Why apart from train.model: model.py loads a base for anyone (training, sampling, generate); this
file applies the training settings to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from prep.errors import UsageError
from train.config import TrainConfig


def weight_dtype(mixed_precision: str) -> Any:
    """Frozen UNet and text-encoder weights in the mixed-precision dtype; LoRA weights stay fp32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(mixed_precision=config.run.mixed_precision)


def load_model(config: TrainConfig, device: Any, *, unet_device: Any = None) -> Any:
    """The base model with UNet and text encoders in the training dtype and the VAE in `vae_dtype`,
    all on `device` except the UNet when `unet_device` says where it waits (the trainer keeps it on
    the host until the caches are filled)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from train.model import load_base

    if not config.model.base:
        raise UsageError("no base model given",
                         hint="pass --base MODEL (diffusers folder, .safetensors file or hub id)")
    prediction = None if config.model.prediction_type == "auto" else config.model.prediction_type
    # Loaded on the host, then each module moved in its training dtype: moving fp32 weights to the
    # GPU first and casting there held an fp32 copy of the whole model at once (SDXL: 13 GB allocated,
    # and the freed fp32 blocks stayed reserved through training).
    base = load_base(config.model.base, allow_pickle=config.model.allow_pickle, device="cpu",
                     prediction_type=prediction, config=config.model.base_config)
    if config.model.base_weights:  # base weights (issue 21): LoRAs merged into the base, in fp32, first
        from train.loratools.bake import bake_into_model
        from train.loratools.weighted import parse_weighted

        bake_into_model(base, [parse_weighted(text) for text in config.model.base_weights])
    dtype = weight_dtype(config.run.mixed_precision)
    base.unet.to(device=unet_device if unet_device is not None else device, dtype=dtype)
    for module in base.text_encoders:
        module.to(device=device, dtype=dtype)
    base.vae.to(device=device, dtype=vae_dtype(config.run.vae_dtype, base.family, device))
    if config.run.vae_tiling:
        base.vae.enable_tiling()
    if config.run.channels_last:
        import torch

        for module in (base.unet, base.vae):
            module.to(memory_format=torch.channels_last)
    if base.family == "sd3":  # its joint attention already runs on SDPA; T5's padded length from the config
        base.tokenizers[2].model_max_length = config.model.t5_max_length
        if str(dtype) == "torch.float16":  # T5's feed-forward output overflows in fp16
            from train.sd3 import keep_fp32_parts
            keep_fp32_parts(base.text_encoders[2])
    else:
        base.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA: flash/memory-efficient kernels
    if config.run.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if config.network.train_text_encoder:
            for encoder in base.text_encoders:
                encoder.gradient_checkpointing_enable()
    return base


def compiled(unet: Any, mode: str) -> Any:
    """`--torch-compile MODE`: the UNet through torch.compile (the first steps compile; the LoRA
    weights are shared with the uncompiled module, which saving and sampling keep using)."""
    if mode == "off":
        return unet
    import torch

    return torch.compile(unet, mode=mode)


def vae_dtype(choice: str, family: str, device: Any) -> Any:
    """`auto`: bf16 for SDXL on a GPU that has it (SDXL's VAE overflows in fp16 but is fine in bf16,
    and it halves the memory of encoding 1024² images), fp32 otherwise (SD1/SD2's VAE, CPUs)."""
    import torch

    if choice == "auto":
        on_bf16_gpu = torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if family == "sdxl" and on_bf16_gpu else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def park(modules: Sequence[Any]) -> list[Any]:
    """Move modules the steps no longer need (encoders whose outputs are all cached) off the
    accelerator; returns those moved, for `borrowed` to bring back while sampling."""
    import torch

    moved = [m for m in modules if m.device.type != "cpu"]
    for module in moved:
        module.to("cpu")
    if moved and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return moved


@contextlib.contextmanager
def borrowed(modules: Sequence[Any], device: Any) -> Iterator[None]:
    """Parked modules back on `device` for a while (rendering samples), then parked again."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        park(modules)

