"""Natural-language captioners through transformers' own model classes (no remote code).

- `florence2`: Florence-2 (`Florence2ForConditionalGeneration`, native since transformers 5 — the
  `florence-community` repositories hold the weights in that layout; `microsoft/Florence-2-*` need
  remote code and are not used). Tasks: caption, detailed, more-detailed.
- `joycaption`: JoyCaption (a LLaVA model, `LlavaForConditionalGeneration`), asked with a prompt.
- `qwen-vl`: Qwen2.5-VL or newer (`AutoModelForImageTextToText` resolves the native class from the
  folder's config), asked with a prompt.

Each loads from a local folder only (`local_files_only`, `trust_remote_code=False`): the registry's
or `--caption-dir`. On CUDA the weights run in bf16 (fp16 where bf16 is unsupported), on the CPU in
fp32. Images are captioned in batches; chat models pad on the left so every row generates from its
own last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from prep.errors import ModelMismatch, UsageError
from prep.images import WHITE, flatten_alpha
from prep.tagging.device import torch_device

FLORENCE_TASKS = {"caption": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "more-detailed": "<MORE_DETAILED_CAPTION>"}
# JoyCaption's caption types, as prompts (`--prompt NAME` or any text).
JOYCAPTION_PROMPTS = {
    "descriptive": "Write a long descriptive caption for this image in a formal tone.",
    "descriptive-casual": "Write a descriptive caption for this image in a casual tone.",
    "straightforward": "Write a straightforward caption for this image. Describe only what is visible.",
    "booru-like": "Write a list of Booru-like tags for this image.",
    "training prompt": "Write a stable diffusion prompt for this image.",
}
JOYCAPTION_SYSTEM = "You are a helpful image captioner."
QWEN_PROMPT = "Describe this image in one detailed paragraph, as a caption for training an image model."
DEFAULT_MODELS = {"florence2": "florence-2-base", "joycaption": "joycaption-beta-one", "qwen-vl": "qwen2.5-vl-3b"}


@dataclass(frozen=True)
class VlmSettings:
    """What to ask and how long the answer may be. `prompt`: a name from JOYCAPTION_PROMPTS or text."""

    task: str = "detailed"
    prompt: str | None = None
    max_new_tokens: int = 256
    beams: int = 3  # Florence-2 (its model card's setting); chat models decode greedily
    batch_size: int = 4
    device: str = "auto"  # `tag --device`: auto, cpu or cuda (prep.tagging.device.torch_device)

    def __post_init__(self) -> None:
        if self.task not in FLORENCE_TASKS:
            raise UsageError(f"--task must be {', '.join(FLORENCE_TASKS)}, not '{self.task}'")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise UsageError("--max-new-tokens and the caption batch size must be at least 1")


def _device_and_dtype(device: str = "auto") -> tuple[str, Any]:
    import torch

    if torch_device(device) == "cuda":  # type: ignore[arg-type]
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def _quiet_load(folder: Path, kind: str, load: Any) -> Any:
    """transformers' from_pretrained, offline, its warnings silenced; errors become ModelMismatch."""
    from transformers.utils import logging as hf_logging

    if not (folder / "config.json").is_file():
        raise ModelMismatch(f"{folder} is not a {kind} model folder (no config.json)",
                            hint=f"pull one with `loraprep models pull {DEFAULT_MODELS.get(kind, kind)}`")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # loraprep draws its own progress; a second bar would interleave
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelMismatch(f"{folder}: transformers cannot load this {kind} model ({first})",
                            hint="the folder must hold a transformers-format model (config.json, weights, processor)") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _clean(text: str) -> str:
    """One line of printable text (a model may emit control characters or several lines)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [flatten_alpha(image, WHITE).convert("RGB") for image in images]


class Florence2Captioner:
    """Florence-2 with a caption task prompt; beam search, as its model card runs it."""

    kind = "florence2"

    def __init__(self, folder: Path, *, name: str | None = None, settings: VlmSettings = VlmSettings()) -> None:
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.name, self.settings = name or folder.name, settings
        self.device, self.dtype = _device_and_dtype(settings.device)
        options = dict(local_files_only=True, trust_remote_code=False)
        self.processor = _quiet_load(folder, self.kind, lambda: AutoProcessor.from_pretrained(folder, **options))
        self.model = _quiet_load(folder, self.kind, lambda: Florence2ForConditionalGeneration.from_pretrained(
            folder, dtype=self.dtype, **options)).to(self.device).eval()

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        task = FLORENCE_TASKS[self.settings.task]
        inputs = self.processor(text=[task] * len(images), images=_rgb(images), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.settings.max_new_tokens,
                                         num_beams=self.settings.beams, do_sample=False)
        return [_clean(text) for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


class ChatCaptioner:
    """An image-text-to-text chat model (JoyCaption's LLaVA, Qwen-VL) asked one prompt per image."""

    def __init__(self, folder: Path, kind: str, *, name: str | None = None,
                 settings: VlmSettings = VlmSettings()) -> None:
        from transformers import AutoModelForImageTextToText

        self.kind, self.name, self.settings = kind, name or folder.name, settings
        self.device, self.dtype = _device_and_dtype(settings.device)
        options = dict(local_files_only=True, trust_remote_code=False)
        self.processor = _quiet_load(folder, kind, lambda: self.load_processor(folder, options))
        self.model = _quiet_load(folder, kind, lambda: AutoModelForImageTextToText.from_pretrained(
            folder, dtype=self.dtype, **options)).to(self.device).eval()
        self.processor.tokenizer.padding_side = "left"
        self.prompt = self.resolve_prompt(settings.prompt)

    def load_processor(self, folder: Path, options: dict[str, Any]) -> Any:
        """AutoProcessor; Qwen-VL without torchvision: its processor minus the video half (prep.tagging.imageonly)."""
        from transformers import AutoProcessor

        from prep.tagging import imageonly

        if self.kind == "qwen-vl" and imageonly.needed():
            return imageonly.load(folder, **options)
        return AutoProcessor.from_pretrained(folder, **options)

    def resolve_prompt(self, prompt: str | None) -> str:
        if self.kind == "joycaption":
            return JOYCAPTION_PROMPTS.get((prompt or "descriptive").lower(), prompt or "")
        return prompt or QWEN_PROMPT

    def conversation(self) -> list[dict[str, Any]]:
        user = [{"type": "image"}, {"type": "text", "text": self.prompt}]
        if self.kind == "joycaption":
            return [{"role": "system", "content": JOYCAPTION_SYSTEM}, {"role": "user", "content": user}]
        return [{"role": "user", "content": user}]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        text = self.processor.apply_chat_template(self.conversation(), tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text] * len(images), images=_rgb(images), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.settings.max_new_tokens, do_sample=False)
        new = tokens[:, inputs["input_ids"].shape[1]:]
        return [_clean(text) for text in self.processor.batch_decode(new, skip_special_tokens=True)]


def load_captioner(kind: str, folder: Path, *, name: str | None = None, settings: VlmSettings = VlmSettings()) -> Any:
    if kind == "florence2":
        return Florence2Captioner(folder, name=name, settings=settings)
    return ChatCaptioner(folder, kind, name=name, settings=settings)
