"""`lora merge --base`: LoRAs baked into a base model, checked as W + w·ΔW with every other tensor's
bytes unchanged, in both layouts, loading in diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loras import lora_file
from prep.errors import LoraprepError
from prep.progress import Reporter
from singlefiles import save_sdxl_single_file
from tinymodels import save_sd15_single_file
from train.loratools.bake import merge_into_base
from train.loratools.deltas import read_deltas
from train.loratools.layout import open_base
from train.loratools.tensorfile import SafetensorsFile


@pytest.fixture(scope="module")
def sd15_loras(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return (lora_file(tiny_sd15, folder, seed=1, name="a"),
            lora_file(tiny_sd15, folder, seed=2, name="b", train_text_encoder=False, conv_dim=0))


def expected_weights(base: Path, loras: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    model = open_base(base)
    expected: dict[str, torch.Tensor] = {}
    for path, strength in loras:
        for name, module in read_deltas(path, unet_config=model.unet_config).modules.items():
            start = expected.get(name, model.weight(model.slots[name]).float())
            expected[name] = start + strength * module.delta().reshape(start.shape)
    return expected


def assert_baked(base: Path, out: Path, loras: list[tuple[Path, float]]) -> None:
    """Changed modules are base + Σ w·ΔW; every other tensor's bytes are the base's."""
    old, new = open_base(base), open_base(out)
    expected = expected_weights(base, loras)
    assert old.slots.keys() == new.slots.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(new.weight(new.slots[name]).float(), weight, atol=1e-5, rtol=1e-5)
    changed_keys = {old.slots[name].key for name in expected}
    for path, source in old.files.items():
        written = new.files[new.source / path.relative_to(base)] if old.kind == "folder" else new.files[new.source]
        assert list(written.entries) == list(source.entries)
        for key in source.entries:
            if key not in changed_keys:
                assert written.raw(key) == source.raw(key), key


def test_bake_into_a_folder_is_base_plus_weighted_deltas(tiny_sd15: Path, sd15_loras, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    loras = [(sd15_loras[0], 0.7), (sd15_loras[1], -0.5)]
    out = tmp_path / "merged"
    summary = merge_into_base(str(tiny_sd15), loras, out)
    assert summary["format"] == "diffusers" and summary["modules_merged"] == len(expected_weights(tiny_sd15, loras))
    assert_baked(tiny_sd15, out, loras)
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tiny_sd15 / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.testing.assert_close(pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight,
                               expected_weights(tiny_sd15, loras)[name])


def test_bake_into_a_folder_with_dtype_converts_every_weight_file(tiny_sd15: Path, sd15_loras, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "merged"
    merge_into_base(str(tiny_sd15), [(sd15_loras[1], 1.0)], out, dtype="bf16")
    files = sorted(out.rglob("*.safetensors"))
    assert [f.relative_to(out) for f in files] == [f.relative_to(tiny_sd15) for f in sorted(tiny_sd15.rglob("*.safetensors"))]
    for file in files:
        assert {e.dtype for e in SafetensorsFile(file).entries.values() if e.dtype.is_floating_point} == {torch.bfloat16}
    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.bfloat16, safety_checker=None,
                                                   requires_safety_checker=False)
    assert pipe.vae.dtype == torch.bfloat16


def test_bake_into_a_single_file_keeps_its_key_set_and_loads(tiny_sd15: Path, sd15_loras, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    base = save_sd15_single_file(tiny_sd15, tmp_path / "base.safetensors")
    out = tmp_path / "merged.safetensors"
    loras = [(sd15_loras[0], -1.0)]
    merge_into_base(str(base), loras, out)
    assert_baked(base, out, loras)
    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd15), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    name = "lora_te_text_model_encoder_layers_1_self_attn_q_proj"
    state = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    torch.testing.assert_close(state["encoder.layers.1.self_attn.q_proj.weight"], expected_weights(base, loras)[name])


def test_a_single_file_base_bakes_into_a_diffusers_folder(tiny_sd15: Path, sd15_loras, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    base = save_sd15_single_file(tiny_sd15, tmp_path / "base.safetensors")
    out = tmp_path / "merged"
    summary = merge_into_base(str(base), [(sd15_loras[0], 0.5)], out, config=tiny_sd15)
    assert summary["format"] == "diffusers"
    merged, original = open_base(out), open_base(tiny_sd15)
    expected = expected_weights(base, [(sd15_loras[0], 0.5)])
    for name, slot in original.slots.items():
        want = expected.get(name, original.weight(slot))
        torch.testing.assert_close(merged.weight(merged.slots[name]), want, atol=1e-6, rtol=1e-6)
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_folder_base_bakes_into_the_original_single_file_layout(family: str, tiny_sd15: Path, tiny_sdxl: Path,
                                                                  tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder, save = (tiny_sd15, save_sd15_single_file) if family == "sd15" else (tiny_sdxl, save_sdxl_single_file)
    lora = lora_file(folder, tmp_path / "loras", seed=5)
    reference = load_file(save(folder, tmp_path / "reference.safetensors"))
    out = tmp_path / "merged.safetensors"
    merge_into_base(str(folder), [(lora, -0.6)], out)
    merged = load_file(out)
    assert merged.keys() == reference.keys()
    model, written = open_base(tmp_path / "reference.safetensors"), open_base(out)
    expected = expected_weights(tmp_path / "reference.safetensors", [(lora, -0.6)])
    changed = {model.slots[name].key for name in expected}
    assert all(torch.equal(merged[k], v) for k, v in reference.items() if k not in changed)
    for name, weight in expected.items():
        torch.testing.assert_close(written.weight(written.slots[name]), weight, atol=1e-6, rtol=1e-6)
    if family == "sd15":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(folder), local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
        key = "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight"
        name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k"
        torch.testing.assert_close(pipe.unet.state_dict()[key], written.weight(written.slots[name]))


def test_bake_sdxl_single_file_merges_into_fused_text_encoder_rows(tiny_sdxl: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    lora = lora_file(tiny_sdxl, tmp_path / "loras", seed=3)
    base = save_sdxl_single_file(tiny_sdxl, tmp_path / "base.safetensors")
    out = tmp_path / "merged.safetensors"
    merge_into_base(str(base), [(lora, 0.8)], out, dtype="fp16")
    source, written = SafetensorsFile(base), SafetensorsFile(out)
    assert list(written.entries) == list(source.entries)
    assert all(e.dtype == torch.float16 for e in written.entries.values() if e.dtype.is_floating_point)
    model, merged = open_base(base), open_base(out)
    for name, weight in expected_weights(base, [(lora, 0.8)]).items():
        torch.testing.assert_close(merged.weight(merged.slots[name]).float(), weight.half().float())
    assert any(model.slots[name].rows for name in read_deltas(lora).modules)  # te2 q/k/v rows were changed
    pipe = StableDiffusionXLPipeline.from_single_file(str(out), config=str(tiny_sdxl), local_files_only=True)
    key = "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    name = "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_k"
    torch.testing.assert_close(pipe.unet.state_dict()[key].float(), merged.weight(merged.slots[name]).float())


@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
def test_bake_applies_dora_as_the_clients_do(client: str, tiny_sd15: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from test_clients import CLIENTS

    lora = lora_file(tiny_sd15, tmp_path / "loras", seed=4, dora=True, conv_dim=0)
    out = tmp_path / "merged"
    merge_into_base(str(tiny_sd15), [(lora, 0.5)], out)
    old, new, stored = open_base(tiny_sd15), open_base(out), load_file(lora)
    modules = [m for m in read_deltas(lora).modules.values() if m.dora_axis]
    assert modules
    for module in modules:
        tensors = {k[len(module.name) + 1:]: v.float() for k, v in stored.items() if k.startswith(module.name + ".")}
        expected = CLIENTS[client](old.weight(old.slots[module.name]).float(), tensors, 0.5)
        torch.testing.assert_close(new.weight(new.slots[module.name]).float(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["family", "shape", "pickle", "interrupt"])
def test_bake_refuses_bad_input_and_leaves_nothing(case: str, tiny_sd15: Path, tiny_sdxl: Path, sd15_loras,
                                                    tmp_path: Path) -> None:
    base, lora, out = str(tiny_sd15), sd15_loras[0], tmp_path / "out" / "merged"
    out.parent.mkdir()
    reporter = Reporter()
    if case == "family":
        base = str(tiny_sdxl)
    elif case == "shape":
        from safetensors.torch import save_file

        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        lora = tmp_path / "odd.safetensors"
        save_file({f"{name}.lora_down.weight": torch.ones(2, 7), f"{name}.lora_up.weight": torch.ones(32, 2)}, lora)
    elif case == "pickle":
        base = str(tmp_path / "base.ckpt")
        torch.save({"state_dict": {"cond_stage_model.transformer.x": torch.zeros(1)}}, base)

    def interrupt(event) -> None:
        if event.kind == "advance":
            raise KeyboardInterrupt

    if case == "interrupt":
        reporter = Reporter(interrupt)
    with pytest.raises(KeyboardInterrupt if case == "interrupt" else LoraprepError) as error:
        merge_into_base(base, [(lora, 1.0)], out, reporter=reporter)
    if case != "interrupt":
        assert "\n" not in error.value.message
        assert {"family": "SD 1.x LoRA but the base is SDXL", "shape": "changes a [32, 7] weight but the base's is",
                "pickle": "--allow-pickle"}[case] in str(error.value)
    assert list(out.parent.iterdir()) == []


def test_a_trusted_pickle_base_bakes_into_safetensors_with_its_keys(tiny_sd15: Path, sd15_loras, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(save_sd15_single_file(tiny_sd15, tmp_path / "base.safetensors"))
    checkpoint = tmp_path / "base.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, checkpoint)
    out = tmp_path / "merged.safetensors"
    merge_into_base(str(checkpoint), [(sd15_loras[1], 1.0)], out, allow_pickle=True)
    merged = load_file(out)
    assert merged.keys() == state.keys()
    changed = {key for key in state if not torch.equal(state[key], merged[key])}
    model = open_base(checkpoint, allow_pickle=True)
    assert changed == {model.slots[name].key for name in read_deltas(sd15_loras[1]).modules}


# ---------------------------------------------------------------- (IA)³, DyLoRA, LoRA-FA (issue 22)


def lycoris_ia3(weight: torch.Tensor, tensors: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """LyCORIS's IA3Module and the WebUI's network_ia3.py: W + m·(W ⊙ w), w per output row, or per
    input column when `on_input` is set."""
    w = tensors["weight"].float().flatten()
    return weight + strength * weight * (w[None, :] if float(tensors["on_input"]) else w[:, None])


def stored(path: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k[len(name) + 1:]: v for k, v in load_file(path).items() if k.startswith(name + ".")}


def test_bake_ia3_gives_the_outputs_of_the_model_with_the_file_applied(tiny_sd15: Path, tmp_path: Path) -> None:
    from train.model import load_base
    from train.sample import apply_lora

    ia3 = lora_file(tiny_sd15, tmp_path / "loras", "ia3", seed=6)
    out = tmp_path / "merged"
    summary = merge_into_base(str(tiny_sd15), [(ia3, 0.7)], out)
    assert summary["modules_merged"] == len(read_deltas(ia3).modules)
    adapted, baked = load_base(tiny_sd15), load_base(out)
    assert apply_lora(adapted, ia3, 0.7) == ["unet", "text_encoder"]
    torch.manual_seed(0)
    tokens = torch.randint(0, adapted.tokenizers[0].vocab_size, (2, 8))
    latents = torch.randn(2, adapted.unet.config.in_channels, 8, 8)
    with torch.no_grad():
        for model in (adapted, baked):
            model.unet.eval(), model.text_encoders[0].eval()
        states = [m.text_encoders[0](tokens).last_hidden_state for m in (adapted, baked)]
        torch.testing.assert_close(states[1], states[0], atol=1e-5, rtol=1e-5)
        assert (states[0] - load_base(tiny_sd15).text_encoders[0](tokens).last_hidden_state).abs().max() > 1e-3
        outputs = [m.unet(latents, 10, encoder_hidden_states=states[0]).sample for m in (adapted, baked)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_bake_ia3_with_a_lora_into_sdxl_single_file_scales_fused_rows(tiny_sdxl: Path, tmp_path: Path) -> None:
    ia3 = lora_file(tiny_sdxl, tmp_path / "loras", "ia3", seed=7, name="ia3")
    lora = lora_file(tiny_sdxl, tmp_path / "loras", seed=8, name="lora")
    base = save_sdxl_single_file(tiny_sdxl, tmp_path / "base.safetensors")
    out = tmp_path / "merged.safetensors"
    merge_into_base(str(base), [(lora, 0.5), (ia3, -0.8)], out)
    model, merged = open_base(base), open_base(out)
    lora_modules, ia3_modules = read_deltas(lora).modules, read_deltas(ia3).modules
    assert any(model.slots[name].rows for name in ia3_modules)  # te2 k/v rows of the fused in_proj
    assert set(ia3_modules) & set(lora_modules)  # both change to_k/to_v: each from the base weight
    for name in set(ia3_modules) | set(lora_modules):
        weight = model.weight(model.slots[name]).float()
        expected = weight.clone()
        if name in lora_modules:
            expected += 0.5 * lora_modules[name].delta().reshape(weight.shape)
        if name in ia3_modules:
            expected += lycoris_ia3(weight, stored(ia3, name), -0.8) - weight
        torch.testing.assert_close(merged.weight(merged.slots[name]).float(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("algo", "settings"), [("dylora", {"unit": 2}), ("lora-fa", {})])
def test_dylora_and_lora_fa_files_bake_as_plain_loras(algo: str, settings: dict, tiny_sd15: Path,
                                                      tmp_path: Path) -> None:
    lora = lora_file(tiny_sd15, tmp_path / "loras", algo, seed=9, **settings)
    out = tmp_path / "merged"
    merge_into_base(str(tiny_sd15), [(lora, 0.6)], out)
    assert_baked(tiny_sd15, out, [(lora, 0.6)])


def test_bake_refuses_an_ia3_vector_of_another_size_naming_the_module(tiny_sd15: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    ia3 = tmp_path / "odd.safetensors"
    save_file({f"{name}.weight": torch.ones(7), f"{name}.on_input": torch.tensor(0.0)}, ia3,
              metadata={"ss_base_model_version": "sd_v1"})
    with pytest.raises(LoraprepError, match=f"{name} is an \\(IA\\)³ vector of 7 for the base's 32×32 weight"):
        merge_into_base(str(tiny_sd15), [(ia3, 1.0)], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
