"""(IA)³, DyLoRA and LoRA-FA (issue 22): trained, written where users load them, applied back.

The clients' merges are restated in our own words (as tests/train/test_clients.py does for LoRA,
LoHa, LoKr and DoRA): the WebUI's extensions-builtin/Lora network_ia3.py and LyCORIS's IA3Module
both make W + m·(W ⊙ w), w along the output rows, or the input columns when `on_input` is set;
ComfyUI has no (IA)³ loader. DyLoRA and LoRA-FA files are plain LoRA files, checked with
test_clients' LoRA merges.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from prep.errors import UsageError
from test_clients import (CLIENTS, TOLERANCE, adapted_layers, client_differences, randomised, sample_of,
                          set_strength, worst_difference)
from train.config import IA3_LR, NetworkConfig, load_config
from train.export import describe_lora, read_lora, save_lora
from train.model import BaseModel, load_base
from train.network import add_lora

SETTINGS = {"ia3": {}, "dylora": {"rank": 4, "unit": 2}, "lora-fa": {"rank": 4}}
TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"


def lycoris_ia3_weight(weight: torch.Tensor, t: dict[str, torch.Tensor], multiplier: float = 1.0) -> torch.Tensor:
    """The WebUI and LyCORIS: W + multiplier·(W ⊙ w), w per output row, or per input column when on_input."""
    w = t["weight"].flatten()
    scaled = weight * (w[None, :] if float(t["on_input"]) else w[:, None])
    return weight + multiplier * scaled


def network(source: Path, algo: str, **overrides) -> BaseModel:
    base = load_base(source)
    torch.manual_seed(0)
    add_lora(base.unet, base.text_encoders, NetworkConfig(**{"algo": algo, "alpha": 2, "train_text_encoder": True,
                                                             **SETTINGS[algo], **overrides}))
    for model in (base.unet, *base.text_encoders):
        model.eval()  # peft's new layers start in training mode, where DyLoRA draws a rank prefix
    return randomised(base, [base.unet, *base.text_encoders])


@pytest.fixture(scope="module")
def files(tiny_sd15: Path, tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(family, algo) → (base with the network, written files)."""
    found = {}
    for family, source in (("sd15", tiny_sd15), ("sdxl", tiny_sdxl)):
        for algo in SETTINGS:
            base = network(source, algo)
            config = NetworkConfig(algo=algo, alpha=2, train_text_encoder=True, **SETTINGS[algo])
            written = save_lora(tmp_path_factory.mktemp(f"{family}-{algo}") / algo, unet=base.unet,
                                text_encoders=base.text_encoders, base=base, dtype=torch.float32,
                                network_config=config)
            found[(family, algo)] = (base, written)
    return found


# ---------------------------------------------------------------- (IA)³


def test_ia3_adapts_keys_values_and_feed_forward_inputs_as_lycoris_preset(files: dict) -> None:
    base, (path,) = files[("sd15", "ia3")]
    tensors = load_file(path)
    modules = {k.rsplit(".", 1)[0] for k in tensors}
    assert {k.rsplit(".", 1)[1] for k in tensors} == {"weight", "on_input"}  # no alpha, no diffusers file
    assert {m.rsplit("_", 2)[-2] + "_" + m.rsplit("_", 1)[-1] for m in modules} >= {"to_k", "to_v", "net_2", "k_proj"}
    assert not any(m.endswith(("to_q", "to_out_0", "q_proj")) for m in modules)
    assert float(tensors[f"{TO_K}.on_input"]) == 0 and list(tensors[f"{TO_K}.weight"].shape) == [32]
    ff = next(m for m in modules if m.endswith("ff_net_2"))
    assert float(tensors[f"{ff}.on_input"]) == 1
    metadata = read_lora(path).metadata
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"]) == {"algo": "ia3", "preset": "ia3"}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_webui_and_lycoris_reproduce_the_trained_ia3_layers(files: dict, family: str, strength: float) -> None:
    base, (path,) = files[(family, "ia3")]
    tensors = load_file(path)
    layers = adapted_layers(base)
    assert {k.partition(".")[0] for k in tensors} == set(layers)
    set_strength(base, strength)
    try:
        for name, layer in sample_of(layers).items():
            found = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == name}
            weight = layer.get_base_layer().weight.detach()
            difference = worst_difference(layer, lycoris_ia3_weight(weight, found, strength))
            assert difference < TOLERANCE, f"{name} differs by {difference:.2e}"
    finally:
        set_strength(base, 1.0)


def test_ia3_starts_with_no_effect_and_keeps_the_bias(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    add_lora(base.unet, base.text_encoders, NetworkConfig(algo="ia3", train_text_encoder=True))
    k_proj = next(m for n, m in base.text_encoders[0].named_modules() if n.endswith("k_proj") and hasattr(m, "ia3_l"))
    x = torch.randn(2, k_proj.in_features)
    with torch.no_grad():
        assert torch.equal(k_proj(x), k_proj.get_base_layer()(x))
        k_proj.ia3_l["default"].fill_(1.0)  # scale 2: the weight doubles, the bias does not
        expected = torch.nn.functional.linear(x, 2 * k_proj.get_base_layer().weight, k_proj.get_base_layer().bias)
        torch.testing.assert_close(k_proj(x), expected)


def test_ia3_trains_at_its_own_learning_rate_unless_one_is_given() -> None:
    assert load_config(None, {"algo": "ia3"}).optimizer.lr == IA3_LR == 5e-3
    assert load_config(None, {"algo": "ia3", "lr": 1e-3}).optimizer.lr == 1e-3
    assert load_config(None, {"algo": "ia3", "optimizer": "prodigy", "lr": 1.0}).optimizer.lr == 1.0
    assert load_config(None, {}).replace(algo="ia3").optimizer.lr == IA3_LR
    assert load_config(None, {"algo": "lora"}).optimizer.lr == 1e-4


# ---------------------------------------------------------------- DyLoRA


def _dylora_layer(base: BaseModel) -> torch.nn.Module:
    return next(m for n, m in base.unet.named_modules() if n.endswith("attn1.to_k") and hasattr(m, "dylora_unit"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dylora_trains_a_rank_prefix_that_its_cut_file_applies(files: dict, seed: int) -> None:
    base, (path, _diffusers) = files[("sd15", "dylora")]
    layer = _dylora_layer(base)
    tensors = {k.partition(".")[2]: v for k, v in load_file(path).items() if k.startswith(TO_K + ".")}
    x = torch.randn(3, 32)
    layer.train()
    try:
        torch.manual_seed(seed)
        start = int(torch.randint(0, 2, ())) * 2
        torch.manual_seed(seed)
        out = layer(x)
        out.sum().backward()
    finally:
        layer.eval()
    end = start + 2
    cut = {"lora_down.weight": tensors["lora_down.weight"][:end], "lora_up.weight": tensors["lora_up.weight"][:, :end],
           "alpha": tensors["alpha"]}  # sd-scripts' extract_lora_from_dylora: the prefix, alpha kept
    weight = layer.get_base_layer().weight.detach()
    torch.testing.assert_close(out.detach(), torch.nn.functional.linear(x, CLIENTS["WebUI"](weight, cut)),
                               rtol=1e-4, atol=1e-5)
    grad = layer.lora_A["default"].weight.grad
    trained = [i for i in range(4) if grad[i].abs().sum() > 0]
    assert trained == list(range(start, end))  # only the drawn block learns
    layer.lora_A["default"].weight.grad = layer.lora_B["default"].weight.grad = None


def test_dylora_file_is_a_full_rank_lora_naming_its_unit_and_cuts(files: dict) -> None:
    _, (path, _diffusers) = files[("sd15", "dylora")]
    tensors = load_file(path)
    assert {k.partition(".")[2] for k in tensors} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert {v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")} == {4}
    metadata = read_lora(path).metadata
    assert metadata["ss_network_module"] == "networks.dylora" and metadata["ss_network_dim"] == "4"
    assert json.loads(metadata["ss_network_args"])["unit"] == "2"
    info = describe_lora(path)
    assert (info.method, info.algorithm, info.dylora_unit, info.valid_cuts) == ("dylora", "lora", 2, [2, 4])
    assert all(verdict.startswith("exact") for verdict in info.clients.values())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"algo": "dylora", "rank": 6, "unit": 4}, "--unit 4 does not divide --rank 6"),
    ({"algo": "dylora", "rank": 8, "unit": 4, "conv_dim": 2}, "--unit 4 does not divide --conv-dim 2"),
    ({"algo": "lora", "unit": 2}, "unit is a DyLoRA setting"),
    ({"algo": "ia3", "conv_dim": 4}, "no conv layers"),
    ({"algo": "lora-fa", "dora": True}, "DoRA is trained with --algo lora"),
    ({"algo": "dylora", "rank_dropout": 0.1}, "rank_dropout works on LoRA"),
])
def test_settings_that_do_not_fit_the_algorithm_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config(None, overrides)


def test_a_unit_that_does_not_divide_the_rank_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    import cli

    result = CliRunner().invoke(cli.app, ["train", str(tmp_path), "--base", str(tmp_path / "no-such-model"),
                                          "--algo", "dylora", "--rank", "6", "--unit", "4"])
    assert result.exit_code != 0
    assert "--unit 4 does not divide --rank 6" in result.output
    assert "Traceback" not in result.output and "training settings" not in result.output


# ---------------------------------------------------------------- LoRA-FA


def test_lora_fa_trains_only_the_up_projections_with_half_the_optimizer_state(tiny_sd15: Path) -> None:
    from train.optim import training_optimizer

    counts = {}
    for algo in ("lora", "lora-fa"):
        base = load_base(tiny_sd15)
        network = add_lora(base.unet, base.text_encoders, NetworkConfig(algo=algo, rank=4))
        trainable = [n for n, p in base.unet.named_parameters() if p.requires_grad]
        assert trainable and all((".lora_B." in n) == (algo == "lora-fa") or algo == "lora" for n in trainable)
        optimizer, _ = training_optimizer(base.unet, network, load_config(None, {"algo": algo, "rank": 4}))
        for param in network.unet_params:
            param.grad = torch.ones_like(param)
        optimizer.step()
        counts[algo] = sum(t.numel() for state in optimizer.state.values() for t in state.values()
                           if torch.is_tensor(t) and t.dim() > 0)
        assert counts[algo] == 2 * sum(p.numel() for p in network.unet_params)  # Adam: two moments per weight
    assert counts["lora-fa"] < 0.55 * counts["lora"]  # half, or a little more where a layer has more inputs


def test_lora_fa_file_is_a_lora_file_naming_its_module(files: dict) -> None:
    base, paths = files[("sd15", "lora-fa")]
    assert [p.name for p in paths] == ["lora-fa.safetensors", "lora-fa.diffusers.safetensors"]
    assert read_lora(paths[0]).metadata["ss_network_module"] == "networks.lora_fa"
    info = describe_lora(paths[0])
    assert (info.method, info.algorithm) == ("lora-fa", "lora")


# ---------------------------------------------------------------- all three


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ["dylora", "lora-fa"])
@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
def test_clients_reproduce_the_lora_files_of_dylora_and_lora_fa(files: dict, family: str, algo: str,
                                                               client: str) -> None:
    base, paths = files[(family, algo)]
    differences = client_differences(base, paths[0], client, 1.0)
    worst = max(differences, key=differences.get)
    assert differences[worst] < TOLERANCE, f"{client} differs by {differences[worst]:.2e} at {worst}"


def test_lora_info_names_each_and_where_it_applies(files: dict) -> None:
    import cli

    expected = {"ia3": ("(IA)³ (LyCORIS)", "ComfyUI", "no: ComfyUI has no (IA)³ loader"),
                "dylora": ("valid cuts (ranks): 2, 4", "WebUI / Forge", "exact, as a plain LoRA of its full rank"),
                "lora-fa": ("LoRA-FA (sd-scripts", "ComfyUI", "exact, as a plain LoRA (its frozen down")}
    for algo, (phrase, client, verdict) in expected.items():
        path = str(files[("sd15", algo)][1][0])
        result = CliRunner().invoke(cli.app, ["lora", "info", path], terminal_width=250)
        assert result.exit_code == 0, result.output
        assert phrase in result.output, (algo, phrase)
        info = json.loads(CliRunner().invoke(cli.app, ["lora", "info", path, "--json"]).output)
        assert info["method"] == algo and info["clients"][client].startswith(verdict)
        assert info["clients"]["WebUI / Forge"].startswith("exact") and info["clients"]["loraprep"].startswith("exact")


@pytest.mark.parametrize("algo", list(SETTINGS))
def test_init_weights_start_each_network_at_the_files_effect(files: dict, tiny_sd15: Path, algo: str) -> None:
    from train.from_weights import add_lora_from_file

    trained, paths = files[("sd15", algo)]
    base = load_base(tiny_sd15)
    config = NetworkConfig(algo=algo, train_text_encoder=True, **SETTINGS[algo])
    network, _ = add_lora_from_file(base, paths[0], config)
    layers = {n: m for n, m in base.unet.named_modules() if n.endswith("attn1.to_k")}
    expected = {n: m for n, m in trained.unet.named_modules() if n in layers}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.eval()
            x = torch.randn(2, layer.get_base_layer().in_features)
            torch.testing.assert_close(layer(x), expected[name](x), rtol=1e-4, atol=1e-5)
    names = [n for n, p in base.unet.named_parameters() if p.requires_grad]
    assert names and network.unet_params
    if algo == "lora-fa":
        assert all(".lora_B." in n for n in names)
    if algo == "dylora":
        assert all(getattr(m, "dylora_unit", 2) == 2 for m in layers.values())


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(SETTINGS))
def test_a_short_run_lowers_the_loss_and_resumes_exactly(testdata: Path, tmp_path: Path, tiny_sd15: Path,
                                                        algo: str) -> None:
    from train.checkpoint import list_checkpoints
    from train.loop import train
    from train.prepare import load_model
    from trainsets import make_dataset

    manifest = make_dataset(testdata, tmp_path / "ds")
    settings = {"max_steps": 4, "batch_size": 2, "base": str(tiny_sd15), "algo": algo, "seed": 3,
                "lr": {"ia3": None, "dylora": 3e-3, "lora-fa": 3e-3}[algo], **SETTINGS[algo]}
    straight = load_config(None, {**settings, "output_dir": str(tmp_path / "a")})
    base = load_model(straight, "cpu")
    before = fixed_loss(base, manifest, straight)
    result = train(manifest, straight, base=base)
    assert fixed_loss(base, manifest, straight) < before
    tensors = load_file(result.lora_files[0])
    started_at_zero = [v for k, v in tensors.items() if k.partition(".")[2] in ("lora_up.weight", "weight")]
    assert started_at_zero and all(v.abs().max() > 0 for v in started_at_zero)  # the file is not its init
    expected = {n: p.detach().clone() for n, p in base.unet.named_parameters() if p.requires_grad}

    interrupted = straight.replace(output_dir=str(tmp_path / "b"), save_every_steps=2)
    assert train(manifest, interrupted, stop=lambda step: step == 2).stopped_early
    assert list_checkpoints(tmp_path / "b")
    resumed = load_model(interrupted, "cpu")
    train(manifest, interrupted.replace(resume="latest"), base=resumed)
    got = {n: p.detach() for n, p in resumed.unet.named_parameters() if p.requires_grad}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def fixed_loss(base: BaseModel, manifest: Path, config) -> float:
    """The training loss on the first batch, averaged over fixed noise draws: comparable before and after."""
    from prep.progress import SILENT
    from train.batcher import Batcher
    from train.loop import training_step
    from train.plan import plan_training
    from train.prepare import make_accelerator

    accelerator = make_accelerator(config)
    batcher = Batcher(base, plan_training(manifest, config).data, config, accelerator.device)
    batcher.fill_caches(SILENT)
    first, micro_batches = batcher.groups(0, accelerator)[0]
    batch = batcher.condition(micro_batches[0], 0, first)
    generator = torch.Generator().manual_seed(0)
    base.unet.eval()
    with torch.no_grad():
        losses = [float(training_step(base, base.unet, batch, prediction_type=batcher.prediction_type,
                                      loss=config.loss, generator=generator)) for _ in range(4)]
    batcher.close()
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("text", "expected"), [
    ('network_module = "networks.dylora"\nnetwork_dim = 8\nnetwork_args = ["unit=4"]\n', {"algo": "dylora", "unit": 4}),
    ('network_module = "networks.lora_fa"\nnetwork_dim = 8\n', {"algo": "lora-fa", "rank": 8}),
    ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3"]\n', {"algo": "ia3", "lr": IA3_LR}),
    ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3"]\nlearning_rate = 1e-2\n',
     {"algo": "ia3", "lr": 1e-2}),
])
def test_sd_scripts_configs_of_these_networks_translate(tmp_path: Path, text: str, expected: dict) -> None:
    path = tmp_path / "kohya.toml"
    path.write_text(text, encoding="utf-8")
    flat = {k: v for section in load_config(path).to_dict().values() for k, v in section.items()}
    assert {k: flat[k] for k in expected} == expected


@pytest.mark.parametrize(("text", "message"), [
    ('network_module = "networks.dylora"\nnetwork_dim = 6\nnetwork_args = ["unit=4"]\n', "--unit 4 does not divide"),
    ('network_module = "networks.dylora"\nnetwork_args = ["algo=loha"]\n', "takes no algo network arg"),
])
def test_sd_scripts_configs_that_do_not_fit_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "kohya.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        load_config(path)
