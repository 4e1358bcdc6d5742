"""`loraprep lora merge` without --base: the weighted sum of LoRAs as one LoRA, checked through the
clients' own merge formulas (tests/train/test_clients.py): the merged file applied by ComfyUI or the
WebUI changes each base weight exactly as the inputs applied one after another at their weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from loras import base_weights, grouped, random_network, single_thread, written  # noqa: F401  (autouse)
from prep.errors import ModelMismatch, UsageError
from test_clients import CLIENTS
from train.export import load_lora_state
from train.loratools.deltas import read_deltas
from train.loratools.merge import merge_loras
from train.model import load_base

TE_FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"


@pytest.fixture(scope="module")
def inputs(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, float]]:
    """An sd-scripts-style LoRA/LoCon, a LoHa and a diffusers-format LoRA, one weight negative."""
    folder = tmp_path_factory.mktemp("merge-inputs")
    lora = written(random_network(tiny_sd15, seed=0), folder, "a", trigger="sks")[0]
    loha = written(random_network(tiny_sd15, "loha", seed=1), folder, "b", trigger="ohwx")[0]
    diffusers = written(random_network(tiny_sd15, seed=2, conv_dim=0), folder, "c")[1]
    return [(lora, 1.0), (loha, -0.5), (diffusers, 0.7)]


def kohya_file(path: Path) -> Path:
    """The kohya file of a diffusers one (the clients read kohya names)."""
    return path.with_name(path.name.replace(".diffusers", ""))


@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
def test_exact_merge_applies_as_the_inputs_at_their_weights(inputs: list[tuple[Path, float]], tiny_sd15: Path,
                                                            tmp_path: Path, client: str) -> None:
    report = merge_loras(inputs, tmp_path / "merged.safetensors")
    weights, apply = base_weights(tiny_sd15), CLIENTS[client]
    merged = grouped(report.out)
    parts = [(grouped(kohya_file(path)), w) for path, w in inputs]
    assert set(merged) == set().union(*(p for p, _ in parts))
    for name, tensors in merged.items():
        weight = weights[name]
        expected = weight + sum(w * (apply(weight, p[name]) - weight) for p, w in parts if name in p)
        torch.testing.assert_close(apply(weight, tensors), expected, rtol=1e-4, atol=1e-5, msg=name)
    assert report.overall().kept == 1.0 and any("exact weighted sum" in n for n in report.notes)


def test_merged_file_maps_onto_the_base_model(inputs: list[tuple[Path, float]], tiny_sd15: Path,
                                              tmp_path: Path) -> None:
    report = merge_loras(inputs, tmp_path / "merged.safetensors", dtype="fp16")
    state = load_lora_state(report.out, load_base(tiny_sd15))  # names and shapes as generate/--init-weights need
    assert state.components == ["unet", "text_encoder"]
    assert {t.dtype for t in load_file(report.out).values()} == {torch.float16}


def test_merge_at_a_rank_is_the_truncated_svd_of_the_sum(inputs: list[tuple[Path, float]], tmp_path: Path) -> None:
    report = merge_loras(inputs, tmp_path / "merged.safetensors", rank=2)
    sources = [(read_deltas(path), w) for path, w in inputs]
    merged = read_deltas(report.out)
    kept = {r.name: r.kept for r in report.modules}
    for name, module in merged.modules.items():
        total = sum(w * d.modules[name].delta().double() for d, w in sources if name in d.modules)
        s = torch.linalg.svdvals(total.flatten(1))
        assert module.rank == min(2, len(s))
        error = float((module.delta().double() - total).norm())
        assert error == pytest.approx(float(s[2:].pow(2).sum().sqrt()), rel=1e-4, abs=1e-6), name
        assert kept[name] == pytest.approx(float(s[:2].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()), rel=1e-4)


def test_a_lora_minus_itself_changes_nothing(inputs: list[tuple[Path, float]], tmp_path: Path) -> None:
    path = inputs[1][0]
    report = merge_loras([(path, 1.0), (path, -1.0)], tmp_path / "zero.safetensors")
    assert all(float(m.delta().abs().max()) < 1e-5 for m in read_deltas(report.out).modules.values())


def test_metadata_names_the_sources_and_their_triggers(inputs: list[tuple[Path, float]], tmp_path: Path) -> None:
    metadata = read_deltas(merge_loras(inputs, tmp_path / "mix.safetensors").out).metadata
    assert metadata["modelspec.merged_from"] == "a, b, c.diffusers"
    assert metadata["modelspec.trigger_phrase"] == "sks, ohwx"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["modelspec.title"] == "mix"
    assert metadata["ss_network_module"] == "networks.lora" and "b.safetensors ×-0.5" in metadata["ss_training_comment"]


def test_loras_of_two_families_are_refused_naming_a_module(inputs: list[tuple[Path, float]], tiny_sdxl: Path,
                                                           tmp_path: Path) -> None:
    sdxl = written(random_network(tiny_sdxl), tmp_path / "xl", "xl")[0]
    with pytest.raises(ModelMismatch, match=r"xl.safetensors is an SDXL LoRA and a.safetensors an SD1.x one "
                                            r"\(first module: lora_te1_"):
        merge_loras([inputs[0], (sdxl, 1.0)], tmp_path / "out.safetensors")
    assert list(tmp_path.glob("*.safetensors")) == []


def single(path: Path, out: int, inputs: int, **extra: torch.Tensor) -> Path:
    save_file({f"{TE_FC1}.lora_up.weight": torch.randn(out, 2), f"{TE_FC1}.lora_down.weight": torch.randn(2, inputs),
               **extra}, str(path))
    return path


def test_modules_of_different_shapes_are_refused_naming_the_module(tmp_path: Path) -> None:
    a, b = single(tmp_path / "a.safetensors", 8, 4), single(tmp_path / "b.safetensors", 8, 6)
    with pytest.raises(ModelMismatch, match=f"{TE_FC1} changes a 8×4 weight in a.safetensors and a 8×6 one"):
        merge_loras([(a, 1.0), (b, 1.0)], tmp_path / "out.safetensors")


def test_bundled_embeddings_are_carried_and_a_clash_refused(tmp_path: Path) -> None:
    emb = torch.randn(2, 32)
    a = single(tmp_path / "a.safetensors", 8, 4, **{"bundle_emb.sks.clip_l": emb})
    b = single(tmp_path / "b.safetensors", 8, 4)
    report = merge_loras([(a, 1.0), (b, 0.5)], tmp_path / "out.safetensors")
    assert torch.equal(load_file(report.out)["bundle_emb.sks.clip_l"], emb) and report.carried == ["bundle_emb.sks.clip_l"]
    c = single(tmp_path / "c.safetensors", 8, 4, **{"bundle_emb.sks.clip_l": emb + 1})
    with pytest.raises(UsageError, match="a.safetensors and c.safetensors both hold bundle_emb.sks.clip_l"):
        merge_loras([(a, 1.0), (c, 1.0)], tmp_path / "clash.safetensors")


def test_dora_is_refused(tmp_path: Path) -> None:
    a = single(tmp_path / "a.safetensors", 8, 4, **{f"{TE_FC1}.dora_scale": torch.rand(1, 4)})
    with pytest.raises(UsageError, match="DoRA"):
        merge_loras([(a, 1.0)], tmp_path / "out.safetensors")


def test_cli_reads_weights_and_refuses_an_existing_out(tmp_path: Path) -> None:
    a, b = single(tmp_path / "a.safetensors", 8, 4), single(tmp_path / "b.safetensors", 8, 4)
    out = tmp_path / "m.safetensors"
    args = ["lora", "merge", "--lora", str(a), "--lora", f"{b}:-0.25", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "TE" in result.output and "100.00 %" in result.output and "exact weighted sum" in result.output
    expected = read_deltas(a).modules[TE_FC1].delta() - 0.25 * read_deltas(b).modules[TE_FC1].delta()
    torch.testing.assert_close(read_deltas(out).modules[TE_FC1].delta(), expected)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    baked = CliRunner().invoke(app, [*args, "--base", str(tmp_path), "--rank", "4", "--overwrite"])
    assert baked.exit_code == 2 and "--rank applies to a merged LoRA" in baked.output
    config = CliRunner().invoke(app, [*args, "--base-config", str(tmp_path), "--overwrite"])
    assert config.exit_code == 2 and "--base-config goes with --base" in config.output


def test_an_interrupted_merge_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    a = single(tmp_path / "a.safetensors", 8, 4)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)  # Ctrl-C while the bytes go to disk
    with pytest.raises(KeyboardInterrupt):
        merge_loras([(a, 1.0)], tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


@pytest.mark.parametrize(("text", "expected"), [
    ("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.7", ("a.safetensors", 0.7)),
    ("a.safetensors:-1", ("a.safetensors", -1.0)), ("C:/loras/a.safetensors", ("C:/loras/a.safetensors", 1.0)),
    ("C:/loras/a.safetensors:-.5", ("C:/loras/a.safetensors", -0.5)),
])
def test_lora_weights_are_read_after_the_last_colon(text: str, expected: tuple[str, float]) -> None:
    from commands.lora import _weighted

    path, weight = _weighted(text)
    assert (str(path), weight) == expected


def test_cli_bakes_into_a_base_through_merge_into_base(inputs: list[tuple[Path, float]], tiny_sd15: Path,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("train.loratools.bake")  # requirement 2 with --base lands from its own branch
    out = tmp_path / "baked"
    args = ["lora", "merge", "--lora", f"{inputs[0][0]}:0.5", "--base", str(tiny_sd15), "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "modules_merged" in result.output and out.is_dir()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(app, [*args, "--overwrite", "--json"]).exit_code == 0


def test_merged_file_renders_in_diffusers_as_its_inputs_as_weighted_adapters(inputs: list[tuple[Path, float]],
                                                                             tiny_sd15: Path, tmp_path: Path) -> None:
    """What a diffusers user does without merging: load both files as adapters, set their weights."""
    from test_export import pipeline_image

    (a, wa), (c, wc) = inputs[0], (inputs[2][0], -0.6)
    merged = merge_loras([(a, wa), (c, wc)], tmp_path / "ac.safetensors").out
    pipe = load_base(tiny_sd15).pipeline()
    pipe.load_lora_weights(str(a), adapter_name="a")
    pipe.load_lora_weights(str(c), adapter_name="c")
    pipe.set_adapters(["a", "c"], adapter_weights=[wa, wc])
    adapters = pipeline_image(pipe)
    single = load_base(tiny_sd15).pipeline()
    single.load_lora_weights(str(merged), adapter_name="merged")
    assert abs(pipeline_image(load_base(tiny_sd15).pipeline()) - adapters).max() > 0.05  # the LoRAs show
    assert abs(pipeline_image(single) - adapters).max() < 1e-3


def test_ia3_with_a_lora_is_refused_with_the_reason(inputs: list[tuple[Path, float]], tiny_sd15: Path,
                                                     tmp_path: Path) -> None:
    ia3 = written(random_network(tiny_sd15, "ia3", seed=3), tmp_path / "ia3", "ia3")[0]
    with pytest.raises(UsageError, match=r"ia3.safetensors is an \(IA\)³ network: it scales the base weights") as error:
        merge_loras([inputs[0], (ia3, 1.0)], tmp_path / "out.safetensors")
    assert "--base" in error.value.hint and "\n" not in error.value.message
    assert list(tmp_path.glob("*.safetensors")) == []
