"""LoHa and LoKr end to end: trained as LyCORIS does, written in the LyCORIS layout, applied back.

Files are checked against the published formulas, restated here on their own (not through
train.lycoris): LoHa ΔW = (alpha/rank)·(w1_a·w1_b) ⊙ (w2_a·w2_b) with rank = w1_b's rows; LoKr
ΔW = scale·w1 ⊗ w2 with w1 = w1_a·w1_b and w2 = w2_a·w2_b when stored as products, scale =
alpha/rank when a product is stored (rank = its inner size) and 1 for two full matrices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from prep.errors import ModelMismatch, UsageError
from train.config import NetworkConfig, load_config
from train.export import describe_lora, kohya_name, load_lora_into, read_lora, save_lora
from train.lycoris import factorization
from train.model import BaseModel, load_base
from train.network import add_lora
from train.sample import GenerateOptions, generate

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 4, 2.0, 2, 1.0
SETTINGS = {"loha": dict(rank=RANK), "lokr": dict(rank=2, factor=4)}  # rank 2: LoKr's w2 stays a product
PROMPT = "a photo of sks woman"
OPTIONS = GenerateOptions(width=64, height=64, steps=2, cfg=5.0, seed=3)
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def published_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    t = {k: v.double() for k, v in t.items()}
    alpha = float(t["alpha"]) if "alpha" in t else None
    if "hada_w1_a" in t:
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        rank = t["hada_w1_b"].shape[0]
    else:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        rank = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
        product = torch.kron(w1[:, :, None, None] if w2.dim() == 4 else w1, w2)
    scale = alpha / rank if rank is not None and alpha is not None else 1.0
    return product.reshape(shape) * scale


def adapted(base: BaseModel) -> dict[tuple[str, str], torch.nn.Module]:
    """(component, module path) → the peft LoHa/LoKr layer."""
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer

    models = dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))
    return {(component, name): module for component, model in models.items()
            for name, module in model.named_modules() if isinstance(module, (LoHaLayer, LoKrLayer))}


def network(source: Path, algo: str, *, seed: int = 0, **overrides) -> BaseModel:
    """A LoHa/LoKr on attention, 3×3 convs and text encoders, with every factor random (non-zero ΔW)."""
    base = load_base(source)
    torch.manual_seed(seed)
    settings = dict(algo=algo, alpha=ALPHA, conv_dim=CONV_RANK, conv_alpha=CONV_ALPHA, train_text_encoder=True)
    add_lora(base.unet, base.text_encoders, NetworkConfig(**{**settings, **SETTINGS[algo], **overrides}))
    with torch.no_grad():
        for model in (base.unet, *base.text_encoders):
            for param in model.parameters():
                if param.requires_grad:
                    param.normal_(0, 0.5)
    return base


def image(base: BaseModel, lora: Path | None = None, scale: float = 1.0) -> np.ndarray:
    return np.asarray(generate(base, lora, scale, PROMPT, OPTIONS)[0], dtype=np.int16)


@pytest.fixture(scope="module")
def files(tiny_sd15: Path, tiny_sd2v: Path, tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(family, algo) → (source, base with the network, written files)."""
    found = {}
    for family, source in (("sd15", tiny_sd15), ("sd2v", tiny_sd2v), ("sdxl", tiny_sdxl)):
        for algo in ("loha", "lokr"):
            base = network(source, algo)
            written = save_lora(tmp_path_factory.mktemp(f"{family}-{algo}") / algo, unet=base.unet,
                                text_encoders=base.text_encoders, base=base, dtype=torch.float32,
                                network_config=NetworkConfig(algo=algo, **SETTINGS[algo]))
            found[(family, algo)] = (source, base, written)
    return found


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_every_preset_layer_gets_the_algorithm_and_only_it_trains(tiny_sd15: Path, algo: str) -> None:
    base = network(tiny_sd15, algo)
    layers = adapted(base)
    prefix = {"loha": "hada_", "lokr": "lokr_"}[algo]
    assert {c for c, _ in layers} == {"unet", "text_encoder"}
    assert any(p.endswith("attn1.to_q") for _, p in layers) and any(p.endswith("resnets.0.conv1") for _, p in layers)
    trainable = [n for n, p in base.unet.named_parameters() if p.requires_grad]
    assert trainable and all(f".{prefix}" in n for n in trainable)
    conv = next(m for (_, p), m in layers.items() if p.endswith("resnets.0.conv1"))
    assert conv.r["default"] == CONV_RANK and conv.scaling["default"] == CONV_ALPHA / CONV_RANK


def test_loha_starts_as_lycoris_does_with_no_effect(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    torch.manual_seed(0)
    add_lora(base.unet, [], NetworkConfig(algo="loha", rank=RANK))
    layer = next(iter(adapted(base).values()))
    assert torch.count_nonzero(layer.hada_w2_a["default"]) == 0
    assert layer.hada_w1_b["default"].std() > 0.5 and layer.hada_w1_a["default"].std() < 0.2  # N(0, 1), N(0, 0.1)
    assert torch.count_nonzero(layer.get_delta_weight("default")) == 0


@pytest.mark.parametrize(("dimension", "factor", "split"), [  # what LyCORIS 4.1.3's own function returns
    (127, -1, (1, 127)), (128, -1, (8, 16)), (128, 4, (4, 32)), (250, 8, (5, 50)), (360, -1, (18, 20)),
    (512, 16, (16, 32)), (1024, 2, (2, 512)), (320, 32, (10, 32)), (320, -1, (16, 20)), (1280, -1, (32, 40)),
    (640, 8, (8, 80)), (768, -1, (24, 32)),
])
def test_factorization_matches_lycoris(dimension: int, factor: int, split: tuple[int, int]) -> None:
    assert factorization(dimension, factor) == split


def test_lokr_factor_and_full_matrix_mode(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    add_lora(base.unet, [], NetworkConfig(algo="lokr", rank=2, factor=4))
    to_q = next(m for (_, p), m in adapted(base).items() if p.endswith("attn1.to_q"))  # 32×32
    assert tuple(to_q.lokr_w1["default"].shape) == (4, 4) and "default" in to_q.lokr_w2_a
    full = load_base(tiny_sd15)
    add_lora(full.unet, [], NetworkConfig(algo="lokr", rank=100000, alpha=16))
    layers = adapted(full).values()
    assert all("default" in m.lokr_w1 and "default" in m.lokr_w2 for m in layers)
    assert all(m.scaling["default"] == 1.0 for m in layers)  # LyCORIS: full matrices ignore alpha


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_file_rebuilds_each_trained_delta_by_the_published_formula(files: dict, family: str, algo: str) -> None:
    source, base, written = files[(family, algo)]
    assert [p.name for p in written] == [f"{algo}.safetensors"]  # diffusers cannot load it: no diffusers file
    tensors = load_file(written[0])
    modules = {k.rsplit(".", 1)[0] for k in tensors}
    layers = adapted(base)
    assert len(modules) == len(layers)
    for (component, path), layer in layers.items():
        name = kohya_name(component, path, base.family, dict(base.unet.config))
        found = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == name}
        suffixes = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
                    "lokr": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}}[algo]
        assert set(found) == suffixes, name
        expected = layer.get_delta_weight("default").double()
        torch.testing.assert_close(published_delta(found, expected.shape), expected, rtol=1e-5, atol=1e-6)
    assert any(k.startswith("lora_te") for k in tensors)


def test_full_matrix_lokr_file_rebuilds_at_scale_one(tiny_sd15: Path, tmp_path: Path) -> None:
    base = network(tiny_sd15, "lokr", rank=100000, alpha=16, conv_dim=0, train_text_encoder=False)
    (path,) = save_lora(tmp_path / "full", unet=base.unet, base=base, dtype=torch.float32)
    tensors = load_file(path)
    for (component, module_path), layer in adapted(base).items():
        name = kohya_name(component, module_path, base.family)
        found = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == name}
        assert set(found) == {"lokr_w1", "lokr_w2", "alpha"}
        expected = layer.get_delta_weight("default").double()
        torch.testing.assert_close(published_delta(found, expected.shape), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("algo", "args"), [
    ("loha", {"algo": "loha", "conv_dim": "2", "conv_alpha": "1", "preset": "attn"}),
    ("lokr", {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1", "factor": "4", "preset": "attn"}),
])
def test_metadata_is_what_lycoris_writes(files: dict, algo: str, args: dict) -> None:
    metadata = read_lora(files[("sd15", algo)][2][0]).metadata
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"]) == args
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (str(SETTINGS[algo]["rank"]), "2")


@pytest.mark.parametrize(("family", "algo"), [("sd15", "loha"), ("sd15", "lokr"), ("sdxl", "lokr")])
def test_generate_renders_the_file_as_the_network_rendered(files: dict, family: str, algo: str) -> None:
    source, base, written = files[(family, algo)]
    expected = image(base)
    assert np.abs(expected - image(load_base(source))).max() > 10  # the network changes the picture
    assert np.abs(image(load_base(source), written[0]) - expected).max() <= 1  # PIL rounding only


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_init_weights_start_a_network_with_another_alpha_at_the_files_effect(files: dict, algo: str) -> None:
    source, base, written = files[("sd15", algo)]
    fresh = network(source, algo, seed=7, alpha=7.0)
    assert load_lora_into(fresh, written[0]) == ["unet", "text_encoder"]
    for key, layer in adapted(fresh).items():
        torch.testing.assert_close(layer.get_delta_weight("default"), adapted(base)[key].get_delta_weight("default"),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("network_settings", "error"), [
    ({"algo": "lora"}, "LoHa in the file and LoRA in the network"),
    ({"algo": "loha", "rank": 2}, "split differently"),
])
def test_init_weights_refuse_another_algorithm_or_shape(files: dict, network_settings: dict, error: str) -> None:
    source, _, written = files[("sd15", "loha")]
    base = load_base(source)
    add_lora(base.unet, base.text_encoders, NetworkConfig(**{"conv_dim": CONV_RANK, "train_text_encoder": True,
                                                            **network_settings}))
    with pytest.raises(ModelMismatch, match=error):
        load_lora_into(base, written[0])


@pytest.mark.parametrize(("algo", "algorithm", "ranks", "factor"), [
    ("loha", "loha", {RANK, CONV_RANK}, None), ("lokr", "lokr", {2}, 4)])
def test_lora_info_names_algorithm_dims_and_factor(files: dict, algo: str, algorithm: str, ranks: set,
                                                  factor: int | None) -> None:
    info = describe_lora(files[("sd15", algo)][2][0])
    assert (info.algorithm, info.factor, info.dora) == (algorithm, factor, False)
    assert set(info.ranks) <= ranks and info.conv_modules > 0
    assert info.clients["WebUI / Forge"] == info.clients["ComfyUI"] == info.clients["loraprep"] == "exact"
    assert info.clients["diffusers"].startswith("no: diffusers cannot load")


def test_lora_info_command_shows_the_algorithm_and_the_diffusers_limit(files: dict) -> None:
    from cli import app

    result = CliRunner().invoke(app, ["lora", "info", str(files[("sd15", "lokr")][2][0])], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "LoKr (LyCORIS)" in result.output and "LoKr factor" in result.output
    assert "diffusers cannot load LoKr" in result.output


def _write_lycoris_layouts(base: BaseModel, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A file in layouts LyCORIS writes and our trainer does not: Tucker LoHa on a 3×3 conv, LoKr with
    both halves as products (decompose_both), LoKr with a Tucker second half, a module without alpha."""
    g = torch.Generator().manual_seed(5)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    conv = "lora_unet_down_blocks_0_resnets_0_conv1"  # 32 → 32, 3×3
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 32 → 32
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    conv2 = "lora_unet_down_blocks_0_resnets_0_conv2"
    modules = {
        conv: {"hada_w1_a": rand(3, 32), "hada_w1_b": rand(3, 32), "hada_t1": rand(3, 3, 3, 3),
               "hada_w2_a": rand(3, 32), "hada_w2_b": rand(3, 32), "hada_t2": rand(3, 3, 3, 3), "alpha": torch.tensor(1.5)},
        q: {"lokr_w1_a": rand(4, 2), "lokr_w1_b": rand(2, 4), "lokr_w2_a": rand(8, 2), "lokr_w2_b": rand(2, 8),
            "alpha": torch.tensor(1.0)},
        k: {"lokr_w1": rand(2, 2), "lokr_w2": rand(16, 16)},
        conv2: {"lokr_w1": rand(4, 4), "lokr_w2_a": rand(2, 8), "lokr_w2_b": rand(2, 8), "lokr_t2": rand(2, 2, 3, 3),
                "alpha": torch.tensor(3.0)},
    }
    save_file({f"{m}.{s}": v for m, tensors in modules.items() for s, v in tensors.items()}, path,
              metadata={"ss_base_model_version": "sd_v1", "ss_network_module": "lycoris.kohya"})
    return modules


def _tucker(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    return torch.einsum("a b h w, a o, b i -> o i h w", core, out_factor, in_factor)


def test_lycoris_layouts_we_do_not_train_are_applied_exactly(tiny_sd15: Path, tmp_path: Path) -> None:
    from train.sample import apply_lora

    base = load_base(tiny_sd15)
    modules = _write_lycoris_layouts(base, tmp_path / "lycoris.safetensors")
    apply_lora(base, tmp_path / "lycoris.safetensors", 1.0)
    layers = {kohya_name(c, p, base.family): m for (c, p), m in adapted(base).items()}
    assert set(layers) == set(modules)
    for name, t in modules.items():
        expected = layers[name].get_delta_weight("default").double()
        if "hada_t1" in t:
            alpha, rank = float(t["alpha"]), t["hada_w1_b"].shape[0]
            ours = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * \
                _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"]) * alpha / rank
        elif "lokr_t2" in t:
            w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
            ours = torch.kron(t["lokr_w1"][:, :, None, None], w2.contiguous()) * float(t["alpha"]) / t["lokr_w2_b"].shape[0]
        else:
            ours = published_delta(t, expected.shape)
        torch.testing.assert_close(ours.double().reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"factor": 4}, "factor is a LoKr setting"),
    ({"algo": "loha", "dora": True}, "DoRA is trained with --algo lora"),
    ({"algo": "lokr", "network_dropout": 0.1}, "network_dropout applies to LoRA"),
    ({"algo": "lokr", "factor": 0}, "factor must be -1"),
    ({"algo": "oft"}, "not one of"),
])
def test_settings_of_another_algorithm_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config(None, overrides)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_kill_and_resume_equals_an_uninterrupted_run(testdata: Path, tmp_path: Path, tiny_sd15: Path, algo: str) -> None:
    from train.checkpoint import list_checkpoints
    from train.loop import train
    from train.prepare import load_model
    from trainsets import make_dataset

    manifest = make_dataset(testdata, tmp_path / "ds")
    settings = {"max_steps": 2, "batch_size": 2, "alpha": 2, "lr": 1e-3, "scheduler": "cosine",
                "base": str(tiny_sd15), "algo": algo, **SETTINGS[algo]}
    straight = load_config(None, {**settings, "output_dir": str(tmp_path / "a")})
    base = load_model(straight, "cpu")
    result = train(manifest, straight, base=base)
    assert [p.name for p in result.lora_files] == ["lora.safetensors"]
    expected = {n: p.detach().clone() for n, p in base.unet.named_parameters() if p.requires_grad}

    interrupted = straight.replace(output_dir=str(tmp_path / "b"), save_every_steps=1)
    assert train(manifest, interrupted, stop=lambda step: step == 1).stopped_early
    assert list_checkpoints(tmp_path / "b")
    resumed = load_model(interrupted, "cpu")
    train(manifest, interrupted.replace(resume="latest"), base=resumed)
    got = {n: p.detach() for n, p in resumed.unet.named_parameters() if p.requires_grad}
    assert got.keys() == expected.keys() and all(f".{algo}_" in n or ".hada_" in n for n in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
