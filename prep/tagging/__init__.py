"""Image taggers and captioners behind two small protocols; only `prep.models` knows where weights come from.

A `Tagger` turns a batch of preprocessed arrays into per-image tag scores (WD14 via onnxruntime);
a `Captioner` turns a batch of images into sentences (BLIP via transformers). Both are loaded
from a local folder, so tests pass tiny real models built in fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from prep.records import Tags


class Tagger(Protocol):
    name: str
    input_size: int

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def predict(self, batch: np.ndarray) -> list[Tags]: ...


class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...
