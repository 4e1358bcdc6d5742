"""Text conditioning shared by training and sampling, so both see exactly the same embeddings.

SD1/SD2: the text encoder's last hidden state (after its final layer norm); `clip_skip` follows the
WebUI/sd-scripts convention: 1 = last layer, 2 = penultimate layer (then the final layer norm).
SDXL: the penultimate hidden states of both encoders concatenated on the feature axis, plus the
pooled (projected) output of encoder 2, and six "time ids" (original size, crop top-left, target size).
These match what diffusers' pipelines compute, which is what makes a LoRA trained here behave the
same in diffusers, the WebUI and ComfyUI. Prompts longer than 75 tokens are truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class TextModel(Protocol):
    """What conditioning needs from a base model (train.model.BaseModel is one); a protocol, so this
    module does not import the loader and the loader does not import it."""

    text_encoders: list[Any]
    tokenizers: list[Any]

    @property
    def is_sdxl(self) -> bool: ...


@dataclass(frozen=True)
class PromptEmbeds:
    """Text-encoder outputs for a batch: `embeds` [B, 77, D]; `pooled` [B, P] for SDXL, else None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> PromptEmbeds:
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return PromptEmbeds(self.embeds.to(device=device, dtype=dtype), pooled)

    def __getitem__(self, index: Any) -> PromptEmbeds:
        return PromptEmbeds(self.embeds[index], None if self.pooled is None else self.pooled[index])

    @staticmethod
    def cat(items: Sequence[PromptEmbeds]) -> PromptEmbeds:
        pooled = None if items[0].pooled is None else torch.cat([i.pooled for i in items])  # type: ignore[misc]
        return PromptEmbeds(torch.cat([i.embeds for i in items]), pooled)


def tokenize(base: TextModel, captions: Sequence[str]) -> list[torch.Tensor]:
    """Token ids [B, 77] per tokenizer (one for SD1/SD2, two for SDXL), padded and truncated."""
    from train.embedding import expand_prompt  # an embedding's NAME → its N tokens, as clients expand it

    return [
        tokenizer([expand_prompt(tokenizer, c) for c in captions], padding="max_length",
                  max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        for tokenizer in base.tokenizers
    ]


def _hidden(encoder: Any, ids: torch.Tensor, layer_from_end: int, *, final_norm: bool) -> tuple[torch.Tensor, Any]:
    """Hidden state `layer_from_end` layers from the end (1 = last, already normed)."""
    output = encoder(ids.to(encoder.device), output_hidden_states=layer_from_end > 1)
    if layer_from_end == 1:
        return output.last_hidden_state, output
    hidden = output.hidden_states[-layer_from_end]
    if final_norm:
        # transformers 5 flattened CLIPTextModel (no `.text_model`); older versions nest it.
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
    return hidden, output


def encode_prompt(base: TextModel, token_ids: Sequence[torch.Tensor], *, clip_skip: int = 1,
                  t5: torch.Tensor | None = None) -> PromptEmbeds:
    """Embeddings for token ids from `tokenize`. Gradients flow when the text encoders train.
    `t5`: SD3's T5 outputs for these captions when cached (T5 then does not run)."""
    if clip_skip < 1:
        raise ValueError("clip_skip counts from 1 (last layer)")
    if getattr(base, "family", None) == "sd3":  # CLIP-L ⊕ CLIP-G, then T5 (train.sd3)
        from train.sd3 import encode_prompt as encode_sd3
        return PromptEmbeds(*encode_sd3(base.text_encoders, token_ids, clip_skip=clip_skip, t5=t5))
    if not base.is_sdxl:
        embeds, _ = _hidden(base.text_encoders[0], token_ids[0], clip_skip, final_norm=True)
        return PromptEmbeds(embeds)
    hidden_1, _ = _hidden(base.text_encoders[0], token_ids[0], clip_skip + 1, final_norm=False)
    hidden_2, output_2 = _hidden(base.text_encoders[1], token_ids[1], clip_skip + 1, final_norm=False)
    return PromptEmbeds(torch.cat([hidden_1, hidden_2.to(hidden_1.device)], dim=-1), output_2.text_embeds)


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
                  target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning vector [6]: (height, width) of the source image before cropping,
    the crop's (top, left) in it, and the (height, width) being generated."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def unet_condition(base: TextModel, prompt: PromptEmbeds, time_ids: torch.Tensor | None = None) -> dict[str, Any]:
    """Keyword arguments for `base.unet(noisy_latents, timesteps, **cond)`.

    For SDXL `time_ids` is [B, 6] (stack `sdxl_time_ids` per image) and is required: guessing it
    would teach the model the wrong crop.
    """
    cond: dict[str, Any] = {"encoder_hidden_states": prompt.embeds}
    if base.is_sdxl:
        if prompt.pooled is None or time_ids is None:
            raise ValueError("SDXL conditioning needs the pooled embedding and time ids")
        cond["added_cond_kwargs"] = {"text_embeds": prompt.pooled,
                                     "time_ids": time_ids.to(prompt.embeds.device, prompt.embeds.dtype)}
    return cond
