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
