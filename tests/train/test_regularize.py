"""sd-scripts' overfitting knobs on peft LoRA layers: rank dropout, module dropout, max-norm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import NetworkConfig
from train.model import load_base
from train.network import add_adapter, add_lora
from train.regularize import _dropout_hook, add_lora_dropout, apply_max_norm, lora_layers


def _train_mode() -> torch.nn.Module:
    return torch.nn.Identity().train()


@pytest.mark.parametrize(("shape", "rank_axis", "shared_axes"), [
    ((6, 5, 8), 2, (1,)),        # transformer tokens [B, T, r]: one mask per sample, all tokens
    ((6, 8, 3, 3), 1, (2, 3)),   # conv [B, r, H, W]: one mask per sample, all pixels
    ((6, 8), 1, ()),
])
def test_rank_dropout_zeroes_whole_ranks_per_sample_and_rescales_the_rest(shape, rank_axis, shared_axes) -> None:
    torch.manual_seed(0)
    out = _dropout_hook(0.5, 0.0)(_train_mode(), None, torch.ones(shape))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    for axis in shared_axes:
        assert torch.equal(out, out.narrow(axis, 0, 1).expand_as(out))
    kept = out.narrow(rank_axis, 0, shape[rank_axis]).flatten().mean()
    assert 0.5 < float(kept) < 1.5


def test_dropouts_are_off_outside_training() -> None:
    x = torch.ones(2, 4)
    assert torch.equal(_dropout_hook(0.9, 0.9)(torch.nn.Identity().eval(), None, x), x)


def test_module_dropout_skips_the_whole_layer_at_its_rate() -> None:
    torch.manual_seed(0)
    hook = _dropout_hook(0.0, 0.3)
    skipped = sum(float(hook(_train_mode(), None, torch.ones(2, 3)).abs().sum()) == 0 for _ in range(400))
    assert 80 < skipped < 160


def test_dropouts_reach_every_lora_layer_and_change_only_training_outputs(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    add_lora(base.unet, [], NetworkConfig(rank=4, rank_dropout=0.5, module_dropout=0.5))
    for name, p in base.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    args = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, base.unet.config.cross_attention_dim))
    with torch.no_grad():
        base.unet.eval()
        first, second = base.unet(*args).sample, base.unet(*args).sample
        base.unet.train()
        torch.manual_seed(1)
        trained = base.unet(*args).sample
    assert torch.equal(first, second) and not torch.allclose(first, trained)


def _linear_lora(rank: int = 2, conv: bool = False) -> tuple[torch.nn.Module, object]:
    from peft import LoraConfig

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3) if conv else torch.nn.Linear(6, 5))
    add_adapter(model, LoraConfig(r=rank, lora_alpha=1, target_modules=["0"], init_lora_weights=False))
    return model, model[0]


@pytest.mark.parametrize("conv", [False, True])
def test_max_norm_shrinks_big_updates_to_the_limit_and_leaves_small_ones(conv: bool) -> None:
    torch.manual_seed(0)
    model, layer = _linear_lora(conv=conv)
    big = float(layer.get_delta_weight("default").norm())
    report = apply_max_norm(lora_layers([model]), big / 4)
    assert report.keys_scaled == 1 and report.max_norm == pytest.approx(big / 4, rel=1e-5)
    assert float(layer.get_delta_weight("default").norm()) == pytest.approx(big / 4, rel=1e-5)
    untouched = apply_max_norm(lora_layers([model]), big)
    assert untouched.keys_scaled == 0 and untouched.mean_norm == pytest.approx(big / 4, rel=1e-5)


def test_dropout_is_not_installed_when_off() -> None:
    model, _ = _linear_lora()
    assert add_lora_dropout([model], rank_dropout=0, module_dropout=0) == 0
    assert add_lora_dropout([model], rank_dropout=0.1, module_dropout=0) == 1
