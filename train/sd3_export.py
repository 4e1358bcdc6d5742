"""SD3 LoRA files: the names diffusers and ComfyUI load, metadata, and which clients apply them.

Why apart from train/export.py: the SD1/SDXL writer and reader stay as they are and ask here only
where SD3 names or describes things differently.

- kohya-style file (`<stem>.safetensors`): `lora_transformer_<diffusers module path with _>` with
  `lora_down`/`lora_up`/`alpha` (the layout OneTrainer writes and ComfyUI maps onto its MMDiT, q/k/v
  into their slices of the fused qkv), `lora_te1_…`/`lora_te2_…` for CLIP-L/G as for SDXL.
- diffusers file (`<stem>.diffusers.safetensors`): `transformer.<path>.lora_A/B.weight` (+
  `text_encoder.`/`text_encoder_2.`) with the adapter configs under the same prefixes, which
  `StableDiffusion3Pipeline.load_lora_weights` reads at the trained strength (ComfyUI reads its keys
  but no alpha, so it applies it exactly only when alpha = rank: ComfyUI users take the other file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.model import BaseModel

KOHYA_TRANSFORMER_PREFIX = "lora_transformer_"
DIFFUSERS_TRANSFORMER = "transformer"


def as_transformer(items: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of the trainer's `unet` component renamed to diffusers' `transformer` (state or configs)."""
    return {(DIFFUSERS_TRANSFORMER + key[len("unet"):] if key.startswith("unet.") else key): value
            for key, value in items.items()}


def metadata(base: BaseModel) -> dict[str, str]:
    """`modelspec.*` / `ss_*` values that say SD3 (3.5 Medium or Large by depth) and flow matching."""
    from train.sd3 import size_label

    size = size_label(dict(base.unet.config))
    return {"modelspec.architecture": f"stable-diffusion-v3-5-{size}/lora",
            "modelspec.implementation": "diffusers", "modelspec.prediction_type": "flow",
            "ss_v_parameterization": "False", "ss_base_model_version": "sd3"}


def client_support(fmt: str, algo: str) -> dict[str, str]:
    """Which clients apply an SD3 LoRA file exactly (the SD1/SDXL table does not hold for SD3)."""
    exact = "exact"
    if fmt == "diffusers":
        plain = algo == "lora"
        return {"loraprep": exact, "WebUI / Forge": "unverified: use ComfyUI",
                "ComfyUI": "use the kohya-style .safetensors file (ComfyUI reads no alpha from this one)",
                "sd-scripts": "no: sd-scripts' SD3 LoRA names the fused MMDiT layers",
                "diffusers": exact if plain else "no"}
    return {"loraprep": exact, "WebUI / Forge": "unverified: use ComfyUI",
            "ComfyUI": exact, "sd-scripts": "no: sd-scripts' SD3 LoRA names the fused MMDiT layers",
            "diffusers": "use the .diffusers.safetensors file" if algo == "lora"
            else "no: diffusers has no LoHa/LoKr for SD3"}
