"""Tiny random natural-language captioners, architecture-exact (each real model's classes and config
layout, widths shrunk), with processors and tokenizers built offline (a byte-level BPE trained here).

Import the fixtures into a test module: `from vlmmodels import tiny_florence2, tiny_llava, tiny_qwen_vl  # noqa: F401`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = ["a girl with long hair sitting on a bench", "a photo of a red rocket in the blue sky",
          "the cat sits on the table next to a cup", "What does the image describe?",
          "Describe in detail what is shown in the image.", "Describe with a paragraph what is shown in the image.",
          "Write a long descriptive caption for this image in a formal tone.", "You are a helpful image captioner."]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ IMAGE }}{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _bpe(folder: Path, specials: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 3, vocab_size=320, min_frequency=1, special_tokens=specials)
    return bpe


# Florence-2-base as florence-community/Florence-2-base configures it (DaViT-base vision tower with a
# 768-wide projection, a 6+6-layer BART-base text model, the 51,289-token vocabulary, 768 px input):
# `build_florence2(folder, full_size=True)` builds it with random weights (bench/tag.py --gpu).
FLORENCE2_BASE = dict(
    vision=dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768, max_position_embeddings=50,
                max_temporal_embeddings=100),
    vocab=51289,
    text=dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
              decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024),
    image_size=768, image_seq_length=577,  # 768 / 32 = 24, 24² patches + the pooled token
    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
FLORENCE2_TINY = dict(
    vision=dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 24, 32], num_heads=[1, 1, 1, 1], num_groups=[1, 1, 1, 1],
                window_size=2, projection_dim=32, max_position_embeddings=8, max_temporal_embeddings=4),
    text=dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
    image_size=64, image_seq_length=5)  # 64 px through strides 4·2·2·2 → 2×2 patches, plus the pooled token


def build_tiny_florence2(folder: Path) -> Path:
    """Florence2ForConditionalGeneration (DaViT vision tower + BART) with its processor (CLIP image
    processor, BartTokenizer with the `<image>` token), saved as the florence-community repos are."""
    return build_florence2(folder)


def build_florence2(folder: Path, *, full_size: bool = False) -> Path:
    """Florence-2 with random weights, at Florence-2-base's size (`full_size`) or at tiny widths.

    The tokenizer is the tiny byte-level BPE either way; at full size its vocabulary is padded with
    made-up words to Florence-2's 51,289 tokens, so the model has its real embedding and output
    sizes and every id a random model generates decodes to a word."""
    import json

    import torch
    from transformers import BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    sizes = FLORENCE2_BASE if full_size else FLORENCE2_TINY
    folder.mkdir(parents=True, exist_ok=True)
    _bpe(folder, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]).save_model(str(folder))
    if "vocab" in sizes:  # one id is left for the `<image>` token the tokenizer adds
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        vocab.update({f"\u0120w{i}": i for i in range(len(vocab), sizes["vocab"] - 1)})
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              extra_special_tokens={"image_token": "<image>"})
    side = sizes["image_size"]
    normalise = {"image_mean": sizes["mean"], "image_std": sizes["std"]} if "mean" in sizes else {}
    images = CLIPImageProcessorPil(size={"height": side, "width": side}, crop_size={"height": side, "width": side},
                                   do_center_crop=False, image_seq_length=sizes["image_seq_length"], **normalise)
    text = {"vocab_size": len(tokenizer), **sizes["text"]}
    config = Florence2Config(
        vision_config=dict(sizes["vision"]),
        text_config=dict(text, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                         forced_bos_token_id=tokenizer.bos_token_id),
        image_token_id=tokenizer.image_token_id)
    torch.manual_seed(0)
    Florence2ForConditionalGeneration(config).eval().save_pretrained(folder)
    Florence2Processor(images, tokenizer).save_pretrained(folder)
    return folder


def _fast_tokenizer(folder: Path, specials: list[str], **named: str):
    from transformers import PreTrainedTokenizerFast

    bpe = _bpe(folder, specials)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **named)


def build_tiny_llava(folder: Path) -> Path:
    """LlavaForConditionalGeneration with JoyCaption Beta One's layout (SigLIP vision tower, Llama text
    model, full feature selection from layer -2), its LlavaProcessor and a chat template."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _fast_tokenizer(folder, ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<image>"],
                                bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                pad_token="<|finetune_right_pad_id|>", extra_special_tokens={"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="full", image_seq_length=4, projector_hidden_act="gelu")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    images = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    LlavaProcessor(images, tokenizer, patch_size=14, vision_feature_select_strategy="full", num_additional_image_tokens=0,
                   chat_template=CHAT_TEMPLATE.replace("{{ IMAGE }}", "<image>")).save_pretrained(folder)
    return folder


def build_tiny_qwen_vl(folder: Path) -> Path:
    """Qwen2_5_VLForConditionalGeneration (windowed ViT with 2×2 merge, M-RoPE text model) with its
    processor (Qwen2-VL image processor, Qwen special tokens) and a chat template."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tokenizer = _fast_tokenizer(folder, specials, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                      "vision_bos_token": "<|vision_start|>",
                                                      "vision_eos_token": "<|vision_end|>"})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(folder)
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    template = CHAT_TEMPLATE.replace("{{ IMAGE }}", "<|vision_start|><|image_pad|><|vision_end|>")

    class ImageSlots(Qwen2_5_VLProcessor):  # saved as Qwen2_5_VLProcessor; no video slot (no torchvision here)
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageSlots.__name__ = "Qwen2_5_VLProcessor"
    ImageSlots(image_processor=images, tokenizer=tokenizer, chat_template=template).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_florence2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_florence2(tmp_path_factory.mktemp("vlm") / "tiny-florence2")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-joycaption")


@pytest.fixture(scope="session")
def tiny_qwen_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen-vl")
