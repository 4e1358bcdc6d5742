"""`loraprep lora resize`: each module becomes the truncated SVD of its ΔW, the best approximation at
that rank (Eckart–Young), checked against the singular values of the original ΔW computed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from loras import lora_file, single_thread  # noqa: F401  (autouse)
from prep.errors import UsageError
from train.export import addnet_hash
from train.loratools.deltas import read_deltas
from train.loratools.resize import ResizeSettings, resize_lora

TE_FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"


@pytest.fixture(scope="module")
def sd15_files(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resize-inputs")
    return {algo: lora_file(tiny_sd15, folder / algo, algo, name=f"my-{algo}") for algo in ("lora", "loha", "lokr")}


def optimal_error(delta: torch.Tensor, rank: int) -> float:
    """‖ΔW − best rank-k approximation‖_F = √(Σ_{i>k} σᵢ²)."""
    s = torch.linalg.svdvals(delta.double().flatten(1))
    return float(s[rank:].pow(2).sum().sqrt())


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_resize_gives_each_module_its_best_approximation(sd15_files: dict[str, Path], tmp_path: Path,
                                                         algo: str) -> None:
    source = sd15_files[algo]
    report = resize_lora(source, tmp_path / "small.safetensors", ResizeSettings(rank=2, conv_rank=1))
    before, after = read_deltas(source), read_deltas(report.out)
    assert after.algos == {"lora"} and set(after.modules) == set(before.modules)
    assert any(m.is_conv for m in after.modules.values())
    results = {r.name: r for r in report.modules}
    for name, module in before.modules.items():
        rank = 1 if module.is_conv else 2
        resized = after.modules[name]
        assert resized.rank == rank and resized.shape == module.shape
        error = float((module.delta().double() - resized.delta().double()).norm())
        assert error == pytest.approx(optimal_error(module.delta(), rank), rel=1e-4, abs=1e-6), name
        norm = float(module.delta().double().norm())
        assert results[name].kept == pytest.approx((1 - (error / norm) ** 2) ** 0.5, rel=1e-4)
    if algo != "lora":
        assert any("converted to plain LoRA" in note for note in report.notes)


def test_resize_keeps_the_scale_and_carries_the_metadata(sd15_files: dict[str, Path], tmp_path: Path) -> None:
    report = resize_lora(sd15_files["loha"], tmp_path / "small.safetensors", ResizeSettings(rank=2))
    tensors, metadata = load_file(report.out), read_deltas(report.out).metadata
    source = read_deltas(sd15_files["loha"])
    q_proj = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert float(tensors[f"{q_proj}.alpha"]) == pytest.approx(source.modules[q_proj].scale * 2)
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_args"]) == ("2", json.dumps({"conv_dim": "2",
                                                                                            "conv_alpha": "1"}))
    assert metadata["modelspec.title"] == "my-loha" and metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["sshs_model_hash"] == addnet_hash(tensors) != source.metadata["sshs_model_hash"]
    assert metadata["ss_training_comment"].startswith("rank resized from 2–4 to 2 by loraprep")


def test_a_rank_at_or_above_the_files_keeps_plain_modules_as_they_are(sd15_files: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    report = resize_lora(sd15_files["lora"], tmp_path / "same.safetensors", ResizeSettings(rank=8))
    before, after = load_file(sd15_files["lora"]), load_file(report.out)
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert report.overall().kept == 1.0


def one_module(path: Path, singular: list[float], metadata: dict[str, str] | None = None, **extra) -> Path:
    """A single linear LoRA module whose ΔW has exactly these singular values (alpha = rank)."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(16, len(singular), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, len(singular), dtype=torch.float64))
    up = (u * torch.tensor(singular, dtype=torch.float64)).float().contiguous()
    save_file({f"{TE_FC1}.lora_up.weight": up, f"{TE_FC1}.lora_down.weight": v.T.float().contiguous(),
               f"{TE_FC1}.alpha": torch.tensor(float(len(singular))), **extra}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(("method", "param", "cap", "rank"), [
    ("sv_ratio", 3.0, None, 2),        # keep σ > 8/3
    ("sv_ratio", 10.0, None, 4),
    ("sv_fro", 0.9, None, 2),          # Σσ² shares 64, 80, 84, 85 of 85: √(80/85) = 0.970 ≥ 0.9
    ("sv_fro", 0.98, None, 3),
    ("sv_cumulative", 0.9, None, 3),   # Σσ shares 8, 12, 14, 15 of 15: 14/15 ≥ 0.9
    ("sv_cumulative", 0.5, None, 1),
    ("sv_cumulative", 0.9, 2, 2),      # --rank caps a dynamic rank
])
def test_dynamic_methods_choose_ranks_as_resize_lora_defines_them(tmp_path: Path, method: str, param: float,
                                                                  cap: int | None, rank: int) -> None:
    source = one_module(tmp_path / "in.safetensors", [8.0, 4.0, 2.0, 1.0])
    report = resize_lora(source, tmp_path / "out.safetensors", ResizeSettings(cap, dynamic=method, param=param))
    assert [r.rank_after for r in report.modules] == [rank]
    assert read_deltas(report.out).metadata["ss_network_dim"] == "Dynamic"


def test_dylora_is_cut_to_its_rank_prefix_without_svd(tmp_path: Path) -> None:
    meta = {"ss_network_module": "networks.dylora", "ss_network_args": '{"unit": "2"}'}
    source = one_module(tmp_path / "dy.safetensors", [8.0, 4.0, 2.0, 1.0], meta)
    report = resize_lora(source, tmp_path / "dy2.safetensors", ResizeSettings(rank=2))
    before, after = load_file(source), load_file(report.out)
    assert torch.equal(after[f"{TE_FC1}.lora_down.weight"], before[f"{TE_FC1}.lora_down.weight"][:2])
    assert torch.equal(after[f"{TE_FC1}.lora_up.weight"], before[f"{TE_FC1}.lora_up.weight"][:, :2])
    assert float(after[f"{TE_FC1}.alpha"]) == 4.0  # alpha kept, as sd-scripts' extract_lora_from_dylora.py
    assert any("no SVD" in note for note in report.notes)
    odd = resize_lora(source, tmp_path / "dy3.safetensors", ResizeSettings(rank=3))
    assert any("not a multiple of the unit" in note for note in odd.notes)


def test_bundled_embeddings_are_carried_over_unchanged(tmp_path: Path) -> None:
    embedding = torch.randn(2, 32)
    source = one_module(tmp_path / "in.safetensors", [3.0, 2.0, 1.0], **{"bundle_emb.sks.clip_l": embedding})
    report = resize_lora(source, tmp_path / "out.safetensors", ResizeSettings(rank=1))
    assert torch.equal(load_file(report.out)["bundle_emb.sks.clip_l"], embedding)
    assert report.carried == ["bundle_emb.sks.clip_l"]


def test_dora_is_refused_with_the_reason(tmp_path: Path) -> None:
    source = one_module(tmp_path / "in.safetensors", [3.0, 2.0], **{f"{TE_FC1}.dora_scale": torch.rand(1, 12)})
    with pytest.raises(UsageError, match="DoRA.*depends on the base model"):
        resize_lora(source, tmp_path / "out.safetensors", ResizeSettings(rank=1))
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("settings", "message"), [
    (ResizeSettings(), "needs --rank"), (ResizeSettings(0), "at least 1"),
    (ResizeSettings(4, dynamic="sv_fro"), "needs --param"), (ResizeSettings(4, dynamic="svd", param=1), "sv_ratio"),
    (ResizeSettings(4, dynamic="sv_fro", param=2.0), "between 0 and 1"), (ResizeSettings(4, param=0.5), "--dynamic"),
])
def test_bad_settings_are_usage_errors(tmp_path: Path, settings: ResizeSettings, message: str) -> None:
    source = one_module(tmp_path / "in.safetensors", [3.0, 2.0])
    with pytest.raises(UsageError, match=message):
        resize_lora(source, tmp_path / "out.safetensors", settings)


def test_cli_prints_blocks_kept_share_and_sizes_and_refuses_an_existing_out(sd15_files: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "small.safetensors"
    args = ["lora", "resize", str(sd15_files["lora"]), "--rank", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "kept ‖ΔW‖" in result.output and "down 0" in result.output and "all" in result.output
    assert "size:" in result.output and " kB → " in result.output
    first = out.read_bytes()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output
    assert out.read_bytes() == first
    assert CliRunner().invoke(app, [*args, "--overwrite", "--json"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]  # no temporaries left


def test_a_lossless_resize_of_an_sdxl_loha_renders_in_diffusers_as_trained(tiny_sdxl: Path, tmp_path: Path) -> None:
    """diffusers cannot load LoHa; resized to plain LoRA at a rank above ΔW's own, it renders the same image."""
    from loras import random_network, written
    from test_export import pipeline_image
    from train.model import load_base

    base = random_network(tiny_sdxl, "loha", seed=4)
    source = written(base, tmp_path)[0]
    trained = pipeline_image(base.pipeline())
    report = resize_lora(source, tmp_path / "plain.safetensors", ResizeSettings(rank=64))
    assert report.overall().kept == pytest.approx(1.0)
    pipe = load_base(tiny_sdxl).pipeline()
    pipe.load_lora_weights(str(report.out), adapter_name="resized")
    assert abs(pipeline_image(load_base(tiny_sdxl).pipeline()) - trained).max() > 0.05  # the LoRA shows
    assert abs(pipeline_image(pipe) - trained).max() < 1e-3  # float32 rounding of another order of sums


@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
def test_clients_apply_the_resized_file_as_the_best_approximation(sd15_files: dict[str, Path], tiny_sd15: Path,
                                                                  tmp_path: Path, client: str) -> None:
    """Through the clients' own formulas (test_clients.py), not loraprep's reader."""
    from loras import base_weights, grouped
    from test_clients import CLIENTS

    report = resize_lora(sd15_files["lora"], tmp_path / "small.safetensors", ResizeSettings(rank=1))
    apply, weights = CLIENTS[client], base_weights(tiny_sd15)
    before, after = grouped(sd15_files["lora"]), grouped(report.out)
    assert set(before) == set(after)
    for name, tensors in after.items():
        weight = weights[name]
        full, small = apply(weight, before[name]) - weight, apply(weight, tensors) - weight
        error = float((small.double() - full.double()).norm())
        assert error == pytest.approx(optimal_error(full, 1), rel=1e-3, abs=1e-5), name
