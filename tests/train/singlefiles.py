"""Original-layout (sgm) single-file versions of the tiny SDXL pipeline, for the tools that read and
write checkpoints the way model sites distribute them (SDXL's second text encoder in OpenCLIP's layout,
q/k/v fused into one `in_proj_weight`), and of the tiny SD2 one (the same OpenCLIP layout). SD1.5's
lives in tinymodels.save_sd15_single_file."""

from __future__ import annotations

from pathlib import Path

_OPENCLIP = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "layer_norm1": "ln_1", "layer_norm2": "ln_2"}


def _openclip_state(state: dict, prefix: str) -> dict:
    import re

    import torch

    out: dict = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{_OPENCLIP[m[2]]}.{m[3]}"] = value
        elif "position_ids" not in key:
            raise ValueError(f"no OpenCLIP name for {key}")
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def save_sd2_single_file(pipeline_dir: Path, out: Path) -> Path:
    """Write the tiny SD2 diffusers folder as one original-layout checkpoint (OpenCLIP text encoder)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from tinymodels import _ldm_unet_key, _ldm_vae_key

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    encoder = CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
    state = {"model.diffusion_model." + _ldm_unet_key(k, dict(unet.config)): v for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and value.dim() == 2:
            value = value[:, :, None, None]
        state["first_stage_model." + _ldm_vae_key(key, dict(vae.config))] = value
    state.update(_openclip_state(encoder.state_dict(), "cond_stage_model.model."))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


def save_sdxl_single_file(pipeline_dir: Path, out: Path) -> Path:
    """Write the tiny SDXL diffusers folder as one original-layout `.safetensors` checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tinymodels import _ldm_unet_key, _ldm_vae_key

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    te1 = CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(pipeline_dir, subfolder="text_encoder_2")
    state = {}
    for key, value in unet.state_dict().items():
        if key.startswith("add_embedding."):
            state["model.diffusion_model." + key.replace("add_embedding.linear_1", "label_emb.0.0")
                  .replace("add_embedding.linear_2", "label_emb.0.2")] = value
        else:
            state["model.diffusion_model." + _ldm_unet_key(key, dict(unet.config))] = value
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and value.dim() == 2:
            value = value[:, :, None, None]
        state["first_stage_model." + _ldm_vae_key(key, dict(vae.config))] = value
    for key, value in te1.state_dict().items():
        if "position_ids" not in key:
            state["conditioner.embedders.0.transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = value
    state.update(_openclip_state(te2.state_dict(), "conditioner.embedders.1.model."))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
