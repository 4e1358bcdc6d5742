"""BLIP image captions (Salesforce blip-image-captioning-*) through transformers.

Loaded from a local folder saved with `save_pretrained` (the registry's, or any other), so the
same code path runs the real model and the tiny one the tests build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from prep.errors import ModelMismatch
from prep.tagging.device import torch_device
from prep.images import WHITE, flatten_alpha

# Each entry: files of which at least one must exist (transformers 5 saves processor_config.json,
# the hub repositories ship preprocessor_config.json).
REQUIRED_FILES = (("config.json",), ("preprocessor_config.json", "processor_config.json"), ("tokenizer_config.json",))


@dataclass(frozen=True)
class BlipSettings:
    """Beam search with bounded length: short, literal captions that read well before the tags."""

    beams: int = 3
    min_length: int = 5
    max_length: int = 40
    batch_size: int = 4
    device: str = "auto"  # `tag --device`: auto, cpu or cuda (prep.tagging.device.torch_device)


class BlipCaptioner:
    """A loaded BLIP model and processor on the best torch device available."""

    def __init__(self, model_dir: Path, *, name: str | None = None, settings: BlipSettings = BlipSettings()) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor
        from transformers.utils import logging as hf_logging

        missing = [" or ".join(names) for names in REQUIRED_FILES if not any((model_dir / n).is_file() for n in names)]
        if missing:
            raise ModelMismatch(f"{model_dir} is not a BLIP model folder (missing {', '.join(missing)})",
                                hint="pull one with `loraprep models pull blip-large`")
        self.name = name or model_dir.name
        self.settings = settings
        self.device = torch_device(settings.device)  # type: ignore[arg-type]
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.processor: Any = BlipProcessor.from_pretrained(model_dir)
            self.model: Any = BlipForConditionalGeneration.from_pretrained(model_dir).to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelMismatch(f"{model_dir}: transformers cannot load this BLIP model: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        rgb = [flatten_alpha(image, WHITE).convert("RGB") for image in images]
        inputs = self.processor(images=rgb, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, num_beams=self.settings.beams,
                                         min_length=self.settings.min_length, max_length=self.settings.max_length)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]
