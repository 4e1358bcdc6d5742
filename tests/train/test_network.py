"""LoRA injection: presets reach the right layers, LoCon ranks convs, DoRA and text-encoder LoRA train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import NetworkConfig
from train.model import load_base
from train.network import add_lora, unet_targets


@pytest.mark.parametrize(("preset", "reaches", "avoids"), [
    ("attn", {"to_q", "to_k", "to_v", "to_out.0"}, {"proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"}),
    ("attn-mlp", {"to_q", "to_out.0", "ff.net.0.proj", "ff.net.2"}, {"proj_in", "proj_out"}),
    ("full", {"to_q", "ff.net.2", "proj_in", "proj_out"}, set()),
])
def test_presets_reach_their_layers(tiny_sd15: Path, preset: str, reaches: set, avoids: set) -> None:
    targets = unet_targets(load_base(tiny_sd15).unet, preset, conv=False)
    suffixes = {r for r in reaches | avoids if any(t.endswith("." + r) for t in targets.linear)}
    assert suffixes == reaches
    assert targets.conv == ()


def _lora_layers(module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters() if "lora_A" in n}


def test_base_is_frozen_and_only_lora_trains(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    network = add_lora(base.unet, base.text_encoders, NetworkConfig(rank=4, alpha=2))
    trainable = [n for n, p in base.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for p in base.text_encoders[0].parameters())
    assert network.parameter_count() == sum(p.numel() for p in network.unet_params)


def test_locon_gives_3x3_convs_their_own_rank(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    add_lora(base.unet, [], NetworkConfig(rank=4, conv_dim=2, conv_alpha=1))
    shapes = _lora_layers(base.unet)
    conv = {n: s for n, s in shapes.items() if ".resnets." in n and (".conv1." in n or ".conv2." in n)}
    attn = {n: s for n, s in shapes.items() if ".to_q." in n}
    assert conv and all(s[0] == 2 for s in conv.values())
    assert attn and all(s[0] == 4 for s in attn.values())


def test_dora_adds_a_magnitude_per_input_column(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    network = add_lora(base.unet, [], NetworkConfig(rank=4, dora=True))
    magnitudes = {n: p for n, p in base.unet.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad}
    to_k = next(p for n, p in magnitudes.items() if "attn2.to_k" in n)
    layer = base.unet.get_submodule(next(n for n in magnitudes if "attn2.to_k" in n).split(".lora_magnitude_vector")[0])
    weight = layer.get_base_layer().weight
    assert to_k.shape == (weight.shape[1],)
    torch.testing.assert_close(to_k, weight.norm(dim=0))  # the column norms, not the row norms: no change at step 0
    assert network.unet_params


def test_text_encoder_lora_has_its_own_learning_rate(tiny_sdxl: Path) -> None:
    base = load_base(tiny_sdxl)
    network = add_lora(base.unet, base.text_encoders, NetworkConfig(rank=4, train_text_encoder=True))
    assert all(_lora_layers(e) for e in base.text_encoders)
    groups = network.param_groups(1e-4, 5e-5)
    assert [g["lr"] for g in groups] == [1e-4, 5e-5]
    assert len(groups[1]["params"]) == sum(1 for e in base.text_encoders for p in e.parameters() if p.requires_grad)


@pytest.mark.parametrize(("alpha", "rank", "scale"), [(None, 8, 1.0), (0, 8, 1.0), (0.0, 4, 1.0), (2, 8, 0.25)])
def test_alpha_zero_or_unset_means_alpha_equals_rank_and_gradients_flow(tiny_sd15: Path, alpha: float | None,
                                                                         rank: int, scale: float) -> None:
    import torch

    base = load_base(tiny_sd15)
    add_lora(base.unet, [], NetworkConfig(rank=rank, alpha=alpha))
    scalings = {m.scaling["default"] for m in base.unet.modules() if hasattr(m, "scaling") and "default" in m.scaling}
    assert scalings == {scale}
    torch.manual_seed(0)
    latents, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, base.unet.config.cross_attention_dim)
    base.unet(latents, torch.tensor([10]), encoder_hidden_states=text).sample.square().mean().backward()
    grads = [p.grad for n, p in base.unet.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_text_encoder_only_trains_no_unet_layers_and_gets_gradients_through_the_frozen_unet(tiny_sd15: Path) -> None:
    import torch

    from train.conditioning import encode_prompt, tokenize
    from train.config import load_config

    config = load_config(None, {"rank": 4, "train_text_encoder_only": True})
    assert config.network.train_text_encoder  # only-the-text-encoder trains the text encoder
    base = load_base(tiny_sd15)
    network = add_lora(base.unet, base.text_encoders, config.network)
    assert not network.unet_params and not _lora_layers(base.unet) and _lora_layers(base.text_encoders[0])
    for name, param in base.text_encoders[0].named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    embeds = encode_prompt(base, tokenize(base, ["sks woman"])).embeds
    base.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=embeds).sample.square().mean().backward()
    grads = [p.grad for n, p in base.text_encoders[0].named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
