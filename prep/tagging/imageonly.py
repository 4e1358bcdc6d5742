"""Chat captioners' processors without their video half, for installs without torchvision.

transformers' Qwen-VL processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) are built from an image processor,
a tokenizer and a video processor. Every video processor needs torchvision, and without it
`AutoProcessor.from_pretrained` fails while checking the video slot (transformers looks its class up
in a placeholder mapping), so a CPU-only torch (no torchvision wheel) could not caption at all.
Captioning sends images only: where torchvision does not work, the processor is built from the same
class with the video slot left out — the same image processor, tokenizer and chat template read
from the folder, the same image-token expansion.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from prep.errors import ModelMismatch

SLOTS = ["image_processor", "tokenizer", "video_processor"]


def needed() -> bool:
    """True when no working torchvision is installed (prep.tagging.wd_timm.torchvision_works)."""
    from prep.tagging.wd_timm import torchvision_works

    return not torchvision_works()


def load(folder: Path, **options: Any) -> Any:
    """The folder's processor class, minus its video processor, loaded from the folder."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.from_pretrained(folder, **options)
    try:
        base = PROCESSOR_MAPPING[type(config)]
    except KeyError:
        raise ModelMismatch(f"{folder}: transformers knows no processor for model type '{config.model_type}'") from None
    if list(inspect.signature(base.__init__).parameters)[1:4] != SLOTS:
        raise ModelMismatch(f"{folder}: {base.__name__} cannot run without torchvision",
                            hint="install torchvision built for this torch")

    class ImagesOnly(base):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = base.__name__
    return ImagesOnly.from_pretrained(folder, **options)
