"""`loraprep lora extract`: a LoRA from a model difference, checked by the linear algebra."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prep.errors import LoraprepError
from singlefiles import save_sd2_single_file, save_sdxl_single_file
from tinymodels import save_sd15_single_file
from train.loratools.extract import extract_lora, low_rank
from train.loratools.layout import open_base

ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
PROJ = "lora_unet_down_blocks_0_attentions_0_proj_in"  # SD1: a 1×1 conv
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
TE = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"


def low_rank_change(shape: tuple[int, ...], rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(shape[0], rank, generator=g)
    down = torch.randn(rank, int(torch.tensor(shape[1:]).prod()), generator=g)
    return (0.05 * up @ down).reshape(shape)


def fine_tune(base: Path, out: Path, changes: dict[str, torch.Tensor]) -> Path:
    """A copy of the diffusers folder `base` with `changes[module]` added to those modules' weights."""
    shutil.copytree(base, out)
    slots = open_base(base).slots
    for module, delta in changes.items():
        file = out / slots[module].file.relative_to(base)
        state = load_file(file)
        state[slots[module].key] = state[slots[module].key] + delta
        save_file(state, str(file))
    return out


@pytest.fixture(scope="module")
def sd15_pair(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    slots = open_base(tiny_sd15).slots
    changes = {name: low_rank_change(slots[name].shape, rank, seed)
               for seed, (name, rank) in enumerate([(ATTN, 2), (PROJ, 3), (CONV, 2), (TE, 1)])}
    tuned = fine_tune(tiny_sd15, tmp_path_factory.mktemp("tuned") / "tuned", changes)
    return tiny_sd15, tuned, changes


def lora_delta(file: Path, module: str) -> torch.Tensor:
    state = load_file(file)
    up, down = state[f"{module}.lora_up.weight"].float(), state[f"{module}.lora_down.weight"].float()
    scale = float(state[f"{module}.alpha"]) / down.shape[0]
    return (scale * up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(
        up.shape[0], *down.shape[1:])


def test_extract_recovers_an_exact_low_rank_change(sd15_pair, tmp_path: Path) -> None:
    base, tuned, changes = sd15_pair
    out = tmp_path / "x.safetensors"
    summary = extract_lora(base, tuned, out, rank=4, conv_rank=4, dtype="fp32")
    for module, delta in changes.items():
        torch.testing.assert_close(lora_delta(out, module), delta, atol=1e-5, rtol=1e-4)
    assert summary.modules == {"unet": 3, "text_encoder": 1}
    assert sum(summary.skipped.values()) > 0 and summary.kept == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
def test_extracted_lora_applied_by_the_clients_gives_the_tuned_weights(client: str, sd15_pair, tmp_path: Path) -> None:
    from test_clients import CLIENTS

    base, tuned, changes = sd15_pair
    out = tmp_path / "x.safetensors"
    extract_lora(base, tuned, out, rank=4, conv_rank=4, dtype="fp32")
    old, new, stored = open_base(base), open_base(tuned), load_file(out)
    for module in changes:
        tensors = {k[len(module) + 1:]: v for k, v in stored.items() if k.startswith(module + ".")}
        applied = CLIENTS[client](old.weight(old.slots[module]), tensors)
        torch.testing.assert_close(applied, new.weight(new.slots[module]), atol=1e-5, rtol=1e-4)


def test_extract_writes_kohya_metadata_and_skips_unchanged_text_encoder(sd15_pair, tmp_path: Path) -> None:
    base, tuned, changes = sd15_pair
    unet_only = fine_tune(base, tmp_path / "unet-only", {k: v for k, v in changes.items() if k != TE})
    out = tmp_path / "x.safetensors"
    summary = extract_lora(base, unet_only, out, rank=2)
    with safe_open(str(out), "pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert not any(k.startswith("lora_te_") for k in keys)
    assert summary.modules == {"unet": 2} and summary.skipped["text_encoder"] > 0  # the 3×3 conv needs --conv-rank
    assert meta["ss_network_dim"] == "2" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_train_unet_only"] == "True" and meta["modelspec.architecture"].startswith("stable-diffusion-v1")
    assert all(t.dtype == torch.float16 for t in load_file(out).values())


def test_truncated_svd_keeps_the_top_singular_directions() -> None:
    matrix = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    up, down, kept = low_rank(matrix, 8)
    s = torch.linalg.svdvals(matrix)
    best = (s[8:].pow(2).sum()).sqrt()
    assert float((matrix - up @ down).norm()) == pytest.approx(float(best), rel=1e-4)
    assert kept == pytest.approx(float(s[:8].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()), rel=1e-5)


def test_randomized_svd_on_large_matrices_is_near_optimal() -> None:
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(1280, 1000, generator=g) @ torch.diag(torch.linspace(1, 0.01, 1000) ** 2) \
        @ torch.randn(1000, 1000, generator=g) / 30
    up, down, _ = low_rank(matrix, 32)
    s = torch.linalg.svdvals(matrix)
    assert float((matrix - up @ down).norm()) <= 1.01 * float(s[32:].pow(2).sum().sqrt())


def test_extract_works_across_layouts_and_for_sdxl(tiny_sdxl: Path, tmp_path: Path) -> None:
    base = open_base(tiny_sdxl)
    slot = base.slots["lora_te2_text_model_encoder_layers_1_self_attn_v_proj"]
    unet = base.slots["lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k"]
    changes = {slot.module: low_rank_change(slot.shape, 2, 5), unet.module: low_rank_change(unet.shape, 2, 6)}
    tuned = save_sdxl_single_file(fine_tune(tiny_sdxl, tmp_path / "tuned", changes), tmp_path / "tuned.safetensors")
    out = tmp_path / "x.safetensors"
    summary = extract_lora(tiny_sdxl, tuned, out, rank=2, dtype="fp32")
    assert summary.modules == {"text_encoder_2": 1, "unet": 1}
    torch.testing.assert_close(lora_delta(out, slot.module), changes[slot.module], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lora_delta(out, unet.module), changes[unet.module], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["sd15", "sd2"])
def test_single_file_names_match_the_folder(family: str, tiny_sd15: Path, tiny_sd2v: Path, tmp_path: Path) -> None:
    source, save = (tiny_sd15, save_sd15_single_file) if family == "sd15" else (tiny_sd2v, save_sd2_single_file)
    folder = open_base(source)
    single = open_base(save(source, tmp_path / "m.safetensors"))
    assert folder.family == single.family and folder.slots.keys() == single.slots.keys()
    for name, slot in folder.slots.items():
        assert torch.equal(folder.weight(slot), single.weight(single.slots[name])), name


@pytest.mark.parametrize("case", ["exists", "family", "pickle"])
def test_extract_refuses_bad_input_and_writes_nothing(case: str, sd15_pair, tiny_sdxl: Path, tmp_path: Path) -> None:
    base, tuned, _ = sd15_pair
    out = tmp_path / "x.safetensors"
    if case == "exists":
        out.write_bytes(b"keep")
    elif case == "family":
        tuned = tiny_sdxl
    else:
        tuned = tmp_path / "tuned.ckpt"
        torch.save({"state_dict": {}}, tuned)
    with pytest.raises(LoraprepError) as error:
        extract_lora(base, tuned, out, rank=2)
    assert "\n" not in error.value.message
    assert {"exists": "--overwrite", "family": "SDXL", "pickle": "--allow-pickle"}[case] in str(error.value)
    assert list(tmp_path.iterdir()) == ([out] if case == "exists" else [tuned] if case == "pickle" else [])
    if case == "exists":
        assert out.read_bytes() == b"keep"


def test_extract_cli_reports_what_it_kept_and_refuses_an_existing_out(sd15_pair, tmp_path: Path) -> None:
    import cli
    from typer.testing import CliRunner

    base, tuned, _ = sd15_pair
    out = tmp_path / "x.safetensors"
    args = ["lora", "extract", str(base), str(tuned), "--rank", "4", "--out", str(out)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "text_encoder: 1 modules extracted" in result.output and "kept 100.00%" in result.output
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(cli.app, args + ["--overwrite", "--json"]).exit_code == 0
