"""Trainer fixtures: tiny, architecture-exact SD1.5 / SD2-v / SDXL pipelines built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymodels import build_tiny_sd2v, build_tiny_sd3, build_tiny_sd15, build_tiny_sdxl


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding an SD1.5-shaped pipeline with random weights (~5 MB, epsilon)."""
    return build_tiny_sd15(tmp_path_factory.mktemp("tiny-models-sd15"))


@pytest.fixture(scope="session")
def tiny_sd2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding an SD2-v-shaped pipeline (v-prediction) with random weights."""
    return build_tiny_sd2v(tmp_path_factory.mktemp("tiny-models-sd2v"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding an SDXL-shaped pipeline (two text encoders) with random weights (~8 MB)."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-models-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding an SD3.5-shaped pipeline (MMDiT, CLIP-L/G, T5) with random weights (~1.4 MB)."""
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-models-sd3"))
