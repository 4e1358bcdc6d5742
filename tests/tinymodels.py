"""Tiny, randomly initialised, architecture-exact Stable Diffusion pipelines for tests and benches.

Why: the trainer and the LoRA exporter must be exercised on the real diffusers/transformers classes
(key names, block layout, conditioning paths) without any download. These pipelines have the exact
module structure of SD1.5 / SD2 / SDXL (same block types, cross-attention, text_time conditioning,
two text encoders for SDXL, an 8× VAE) with tiny widths, a CLIP BPE tokenizer trained offline on a
small caption corpus, and seeded weights, so two builds are bit-identical.

    build_tiny_sd15(dir)  -> dir/"tiny-sd15"   (~1 MB, epsilon, DDIM scheduler)
    build_tiny_sd2v(dir)  -> dir/"tiny-sd2v"   (linear projections, gelu TE, v-prediction)
    build_tiny_sdxl(dir)  -> dir/"tiny-sdxl"   (text_time conditioning, TE1 + TE2 with projection)

Each folder is a `save_pretrained` pipeline, loadable with `DiffusionPipeline.from_pretrained`.
`save_sd15_single_file(folder, file)` rewrites the SD1.5 one as an original-layout (LDM) checkpoint,
the single-file kind model sites distribute, for testing `from_single_file` offline.
Latents are 1/8 of the image side like the real models, so 64×64 images give 8×8 latents.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 600
MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Caption-like words: enough variety for a BPE that splits real captions into sensible pieces.
_CORPUS_WORDS = (
    "a photo of sks woman man person girl boy 1girl 1boy solo smile smiling looking at viewer "
    "portrait upper body full body face close up red blue green yellow black white brown blonde hair "
    "long short eyes open mouth closed shirt dress jacket hat glasses outdoors indoors sky tree grass "
    "flower city street night day sunset beach water rocket astronaut cat dog coffee cup camera "
    "painting anime style high quality masterpiece best worst lowres blurry simple background "
    "standing sitting holding hand hands arms up from side behind meadow concert light dark shadow "
    "the and with in on at by for to is are an one two three four five six seven eight nine ten"
).split()


def _corpus() -> list[str]:
    words = _CORPUS_WORDS
    lines = [" ".join(words[i:i + 7]) for i in range(len(words))]
    lines += [", ".join(words[i::5]) for i in range(5)]
    return lines


def _build_tokenizer(max_length: int = MAX_LENGTH):
    """A CLIPTokenizer whose vocab/merges come from a BPE trained offline on `_corpus()`.

    The pre-tokenizer and `</w>` end-of-word suffix match CLIP's, and every byte (with and without
    `</w>`) is in the vocabulary, so any text tokenizes without unknown pieces.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>", special_tokens=[])
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab: dict[str, int] = {}
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[token] = len(vocab)
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[token + "</w>"] = len(vocab)
    for merge in merges:
        token = "".join(merge)
        vocab.setdefault(token, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _text_config(tokenizer, *, hidden_act: str, projection_dim: int = 32, layers: int = 2):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act=hidden_act,
        projection_dim=projection_dim, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae(scaling_factor: float):
    """Four encoder levels like the real VAE, so latents are 1/8 of the image side."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=scaling_factor,
    )


def _scheduler_kwargs(prediction_type: str) -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type=prediction_type, steps_offset=1, clip_sample=False, set_alpha_to_one=False)


def _save_sd(out: Path, *, v_prediction: bool, seed: int) -> Path:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    sd2 = v_prediction
    tokenizer = _build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="gelu" if sd2 else "quick_gelu"))
    scheduler = DDIMScheduler(**_scheduler_kwargs("v_prediction" if v_prediction else "epsilon"))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_tiny_vae(0.18215), text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_sd15(directory: Path) -> Path:
    """An SD1.5-shaped pipeline (epsilon prediction) saved under `directory/tiny-sd15`."""
    return _save_sd(Path(directory) / "tiny-sd15", v_prediction=False, seed=15)


def build_tiny_sd2v(directory: Path) -> Path:
    """An SD2-v-shaped pipeline (linear projections, gelu text encoder, v-prediction)."""
    return _save_sd(Path(directory) / "tiny-sd2v", v_prediction=True, seed=21)


def build_tiny_sdxl(directory: Path) -> Path:
    """An SDXL-shaped pipeline: text_time conditioning, two text encoders, saved under `directory/tiny-sdxl`."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(directory) / "tiny-sdxl"
    torch.manual_seed(42)
    tokenizer = _build_tokenizer()
    tokenizer_2 = _build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=1,
    )
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, hidden_act="gelu"))
    kwargs = _scheduler_kwargs("epsilon")
    kwargs.pop("clip_sample"), kwargs.pop("set_alpha_to_one")
    scheduler = EulerDiscreteScheduler(**kwargs, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_tiny_vae(0.13025), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


# ---------------------------------------------------------------- original (LDM) single-file layout

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_unet_key(key: str, config: dict) -> str:
    """Original-UNet name of a diffusers UNet parameter (the inverse of diffusers' single-file conversion)."""
    import re

    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    stride = config["layers_per_block"] + 1
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]

    def resnet(tail: str) -> str:
        head, _, rest = tail.partition(".")
        return f"{_UNET_RESNET.get(head, head)}.{rest}"

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = 1 + int(m[1]) * stride + int(m[3])
        return f"input_blocks.{index}.0.{resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{index}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * stride}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = int(m[1]) * stride + int(m[3])
        return f"output_blocks.{index}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{index}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        return f"output_blocks.{level * stride + stride - 1}.{2 if up_attention[level] else 1}.conv.{m[2]}"
    raise ValueError(f"no original name for UNet parameter {key}")


def _ldm_vae_key(key: str, config: dict) -> str:
    import re

    levels = len(config["up_block_types"])
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key


def save_sd15_single_file(pipeline_dir: Path, out: Path) -> Path:
    """Write an SD1.x diffusers folder as one original-layout (LDM) `.safetensors` checkpoint, the
    kind people download from model sites, so `from_single_file` can be tested offline."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
    state: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        state["model.diffusion_model." + _ldm_unet_key(key, dict(unet.config))] = value
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and value.dim() == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1×1 convolutions
        state["first_stage_model." + _ldm_vae_key(key, dict(vae.config))] = value
    for key, value in text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + name] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


# ---------------------------------------------------------------- SD3 / SD3.5 (MMDiT, three text encoders)

T5_MAX_LENGTH = 32


def _build_t5_tokenizer():
    """A T5TokenizerFast whose Unigram vocabulary is trained offline on `_corpus()` (`</s>` appended
    like T5's, `<pad>` = 0 as T5 pads)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    unigram.train_from_iterator(_corpus(), trainer=trainer)
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                          special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_tiny_sd3(directory: Path) -> Path:
    """An SD3.5-shaped pipeline saved under `directory/tiny-sd3`: an MMDiT (joint blocks, a dual-attention
    block as in 3.5 Medium, RMS q/k norm), CLIP-L and CLIP-G with projections, a T5 encoder wider than
    the CLIP pair (so its embeddings are zero-padded as in the real model), a 16-channel VAE with a shift
    factor, and the flow-matching Euler scheduler with shift 3."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    out = Path(directory) / "tiny-sd3"
    torch.manual_seed(35)
    tokenizer, tokenizer_2, tokenizer_3 = _build_tokenizer(), _build_tokenizer(), _build_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=48, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, hidden_act="gelu"))
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=48, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=0))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _swap_halves(tensor):
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def _mmdit_state(transformer) -> dict:
    """The original (SD3 reference / ComfyUI) MMDiT layout of a diffusers SD3 transformer: q/k/v fused
    into qkv, the last block's context modulation and the final layer's in (scale, shift) order."""
    import torch

    sd = transformer.state_dict()
    depth = int(transformer.config.num_layers)
    out: dict = {"pos_embed": sd["pos_embed.pos_embed"]}
    renames = {"pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
               "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "context_embedder": "context_embedder",
               "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
               "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}
    block_renames = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
                     "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
                     "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
                     "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
                     "attn2.to_out.0": "x_block.attn2.proj", "norm1.linear": "x_block.adaLN_modulation.1",
                     "norm1_context.linear": "context_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
                     "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
                     "ff_context.net.2": "context_block.mlp.fc2"}
    fused = {"attn.to_": "x_block.attn.qkv", "attn.add_": "context_block.attn.qkv", "attn2.to_": "x_block.attn2.qkv"}
    for end in ("weight", "bias"):
        for new, old in renames.items():
            out[f"{old}.{end}"] = sd[f"{new}.{end}"]
        out[f"final_layer.adaLN_modulation.1.{end}"] = _swap_halves(sd[f"norm_out.linear.{end}"])
        for i in range(depth):
            block = f"transformer_blocks.{i}"
            for new, old in block_renames.items():
                if f"{block}.{new}.{end}" in sd:
                    value = sd[f"{block}.{new}.{end}"]
                    if new == "norm1_context.linear" and i == depth - 1:
                        value = _swap_halves(value)
                    out[f"joint_blocks.{i}.{old}.{end}"] = value
            for head, target in fused.items():
                parts = [sd.get(f"{block}.{head}{p}.{end}") for p in (("q_proj", "k_proj", "v_proj") if "add_" in head
                                                                       else ("q", "k", "v"))]
                if all(p is not None for p in parts):
                    out[f"joint_blocks.{i}.{target}.{end}"] = torch.cat(parts)
    return out


def save_sd3_single_file(pipeline_dir: Path, out: Path) -> Path:
    """An SD3 diffusers folder as one original-layout `.safetensors` holding the MMDiT and the VAE but no
    text encoders, as Stability ships SD3.5 Large (the encoders then come from a diffusers folder)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from safetensors.torch import save_file

    transformer = SD3Transformer2DModel.from_pretrained(pipeline_dir, subfolder="transformer")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    state = {"model.diffusion_model." + k: v for k, v in _mmdit_state(transformer).items()}
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and value.dim() == 2:
            value = value[:, :, None, None]
        state["first_stage_model." + _ldm_vae_key(key, dict(vae.config))] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
