"""Textual inversion and pivotal tuning on the tiny SD1.5 / SDXL models: what trains, the files the
clients read (diffusers' own loader here), resume, --init-weights, and refusals before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import cli
from prep.errors import UsageError
from train.batcher import Batcher
from train.conditioning import encode_prompt, tokenize
from train.config import load_config
from train.embedding import expand_prompt, load_embedding, load_embeddings, read_embedding
from train.loop import train, training_step
from train.model import load_base
from train.plan import plan_training
from train.prepare import load_model
from trainsets import make_dataset

NAME = "zqx"
RUN = {"seed": 0, "batch_size": 2, "rank": 4, "embedding": NAME, "init_word": "woman", "vectors": 2}


@pytest.fixture(scope="module")
def manifest(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(testdata, tmp_path_factory.mktemp("embedding") / "ds")


def _config(base: Path, out: Path, **extra: object):
    return load_config(None, {**RUN, "base": str(base), "output_dir": str(out), **extra})


def _frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.replace(".original", ""): p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and "vectors" not in n}


def _init_vectors(model_dir: Path, subfolder: str, word: str, count: int) -> torch.Tensor:
    from transformers import CLIPTextModel, CLIPTokenizer

    ids = CLIPTokenizer.from_pretrained(model_dir / subfolder.replace("text_encoder", "tokenizer"))(
        word, add_special_tokens=False).input_ids[:count]
    table = CLIPTextModel.from_pretrained(model_dir / subfolder).get_input_embeddings().weight.detach()
    return torch.stack([table[ids[i * len(ids) // count]] for i in range(count)])


@pytest.mark.slow
def test_textual_inversion_trains_only_the_vectors_and_diffusers_and_generate_use_them(
        manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    (tmp_path / "prompts.txt").write_text(f"{NAME}, smile --w 64 --h 64 --s 2\n")
    config = _config(tiny_sd15, tmp_path / "out", max_steps=3, sample_prompts=str(tmp_path / "prompts.txt"))
    base = load_model(config, "cpu")
    before = [_frozen(base.unet), *(_frozen(e) for e in base.text_encoders)]
    result = train(manifest, config, base=base)
    assert [p.name for p in result.lora_files] == [f"{NAME}.safetensors"]  # no LoRA file: the embedding alone
    assert (tmp_path / "out" / "samples" / "lora-step00000003.png").is_file()  # sampled with the word
    after = [_frozen(base.unet), *(_frozen(e) for e in base.text_encoders)]
    for old, new in zip(before, after, strict=True):
        assert [k for k in old if not torch.equal(old[k], new[k].reshape(old[k].shape))] == []
    tensors = load_file(result.lora_files[0])
    assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (2, 32)
    assert not torch.allclose(tensors["emb_params"], _init_vectors(tiny_sd15, "text_encoder", "woman", 2))

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(result.lora_files[0]), token=NAME)
    ids = pipe.tokenizer.convert_tokens_to_ids([NAME, f"{NAME}_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), tensors["emb_params"])
    ours = load_base(tiny_sd15)
    load_embedding(ours, read_embedding(result.lora_files[0]))
    prompt = f"a photo of {NAME}, smile"
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    mine = encode_prompt(ours, tokenize(ours, [prompt])).embeds
    assert torch.allclose(theirs, mine, atol=1e-5)
    assert torch.allclose(_webui_encode(tiny_sd15, tensors["emb_params"], "a photo of", ", smile"), mine, atol=1e-5)
    _generate_uses_the_file(tiny_sd15, result.lora_files[0], tmp_path)


def _generate_uses_the_file(model: Path, embedding: Path, tmp_path: Path) -> None:
    args = ["generate", f"{NAME}, smile", "--base", str(model), "--steps", "2", "--width", "64", "--height", "64",
            "--device", "cpu"]
    plain = CliRunner().invoke(cli.app, [*args, "-o", str(tmp_path / "plain.png")])
    used = CliRunner().invoke(cli.app, [*args, "--embedding", str(embedding), "-o", str(tmp_path / "e.png")])
    assert plain.exit_code == 0 and used.exit_code == 0, used.output
    assert f"embedding '{NAME}'" in used.output
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "e.png").read_bytes()


def _webui_encode(model: Path, vectors: torch.Tensor, before: str, after: str) -> torch.Tensor:
    """The WebUI's way, restated: the prompt's tokens with N placeholder ids where the embedding's name
    stood, and the embedding layer's output at those N positions overwritten by the file's vectors."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    head = tokenizer(before, add_special_tokens=False).input_ids
    tail = tokenizer(after, add_special_tokens=False).input_ids
    ids = [tokenizer.bos_token_id, *head, *[0] * len(vectors), *tail, tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))
    start = 1 + len(head)

    def put_vectors(_: torch.nn.Module, __: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, start:start + len(vectors)] = vectors
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        with torch.no_grad():
            return encoder(torch.tensor([ids])).last_hidden_state
    finally:
        handle.remove()


def _fixed_loss(base, config, manifest: Path):
    """The training loss over every image at fixed noise and timesteps (what the vectors are judged by)."""
    from train.embedding import with_embedding_captions

    plan = with_embedding_captions(plan_training(manifest, config), config)
    batcher = Batcher(base, plan.data, config.replace(workers=0), "cpu")
    batcher.fill_caches()

    def loss() -> float:
        with torch.no_grad():
            return sum(float(training_step(base, base.unet, batcher.condition(list(range(len(plan.data.examples))),
                                                                              0, seed),
                                           prediction_type="epsilon", loss=config.loss,
                                           generator=torch.Generator().manual_seed(seed))) for seed in range(4))

    return loss


@pytest.mark.slow
def test_loss_falls_as_the_embedding_trains(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    config = _config(tiny_sd15, tmp_path / "out", max_steps=8, embedding_lr=5e-2)
    base = load_model(config, "cpu")
    result = train(manifest, config, base=base)
    trained = base.text_encoders[0].get_input_embeddings()
    loss = _fixed_loss(base, config, manifest)
    after = loss()
    with torch.no_grad():
        trained.vectors.copy_(_init_vectors(tiny_sd15, "text_encoder", "woman", 2))
    start = loss()
    assert after < start, (start, after, result.final_loss)


@pytest.mark.slow
def test_pivotal_tuning_bundles_the_embedding_and_freezes_it_after_its_steps(manifest: Path, tmp_path: Path,
                                                                             tiny_sdxl: Path) -> None:
    config = _config(tiny_sdxl, tmp_path / "out", max_steps=4, algo="lora", embedding_steps=2, save_every_steps=2,
                     lr=1e-3)
    result = train(manifest, config)
    names = [p.name for p in result.lora_files]
    assert names == ["lora.safetensors", "lora.diffusers.safetensors", f"{NAME}.safetensors"]
    embedding = load_file(tmp_path / "out" / f"{NAME}.safetensors")
    assert sorted(embedding) == ["clip_g", "clip_l"]
    lora = load_file(tmp_path / "out" / "lora.safetensors")
    assert torch.equal(lora[f"bundle_emb.{NAME}.clip_l"], embedding["clip_l"])
    assert torch.equal(lora[f"bundle_emb.{NAME}.clip_g"], embedding["clip_g"])
    at_step_2 = load_file(tmp_path / "out" / f"{NAME}-step00000002.safetensors")
    assert all(torch.equal(at_step_2[k], embedding[k]) for k in embedding)  # frozen after step 2
    assert not torch.allclose(embedding["clip_l"], _init_vectors(tiny_sdxl, "text_encoder", "woman", 2))
    lora_at_2 = load_file(tmp_path / "out" / "lora-step00000002.safetensors")
    assert any(not torch.equal(lora_at_2[k], lora[k]) for k in lora if "lora_up" in k)  # the LoRA trained on
    with safe_open(str(tmp_path / "out" / "lora.diffusers.safetensors"), "pt") as handle:
        assert not any(k.startswith("bundle_emb") for k in handle.keys())
    with safe_open(str(tmp_path / "out" / "lora.safetensors"), "pt") as handle:  # each rate as it trained
        assert (handle.metadata()["ss_learning_rate"], handle.metadata()["loraprep.embedding_lr"]) == ("0.001", "0.005")
    with safe_open(str(tmp_path / "out" / f"{NAME}.safetensors"), "pt") as handle:
        assert handle.metadata()["loraprep.learning_rate"] == "0.005"

    info = CliRunner().invoke(cli.app, ["lora", "info", str(tmp_path / "out" / "lora.safetensors"), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["bundled_embeddings"] == {NAME: 2}
    table = CliRunner().invoke(cli.app, ["lora", "info", str(tmp_path / "out" / "lora.safetensors")])
    assert "bundled embeddings" in table.output and f"{NAME} (2 vectors)" in table.output
    assert "embedding in ComfyUI" in table.output
    info = CliRunner().invoke(cli.app, ["lora", "info", str(tmp_path / "out" / f"{NAME}.safetensors")])
    assert info.exit_code == 0 and "textual-inversion embedding" in info.output
    assert f"embedding:{NAME}" in info.output and "clip_g" in info.output
    _diffusers_loads_sdxl_embedding(tiny_sdxl, tmp_path / "out" / f"{NAME}.safetensors")
    rendering = load_base(tiny_sdxl)  # generate --lora brings the bundled embedding, as the WebUI does
    notes = load_embeddings(rendering, [], tmp_path / "out" / "lora.safetensors")
    assert notes == [f"the LoRA bundles embedding '{NAME}' (2 vectors): write {NAME} in the prompt"]
    assert torch.equal(rendering.text_encoders[1].get_input_embeddings().vectors, embedding["clip_g"])


def _diffusers_loads_sdxl_embedding(model: Path, path: Path) -> None:
    """Each half into its encoder, as diffusers documents for SDXL; the vectors and prompt embeddings match."""
    from diffusers import StableDiffusionXLPipeline

    tensors = load_file(path)
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.load_textual_inversion(tensors["clip_l"], token=NAME, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tensors["clip_g"], token=NAME, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for encoder, tokenizer, key in ((pipe.text_encoder, pipe.tokenizer, "clip_l"),
                                    (pipe.text_encoder_2, pipe.tokenizer_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids([NAME, f"{NAME}_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), tensors[key])
    ours = load_base(model)
    load_embedding(ours, read_embedding(path))
    prompt = f"{NAME}, 1girl"
    theirs, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    mine = encode_prompt(ours, tokenize(ours, [prompt]))
    assert torch.allclose(theirs, mine.embeds, atol=1e-5) and torch.allclose(pooled, mine.pooled, atol=1e-5)


@pytest.mark.slow
def test_pivotal_resume_equals_an_uninterrupted_run(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    settings = {"max_steps": 3, "algo": "lora", "embedding_steps": 2, "lr": 1e-3, "save_every_steps": 2,
                "train_text_encoder": True}
    straight = train(manifest, _config(tiny_sd15, tmp_path / "a", **settings))
    interrupted = _config(tiny_sd15, tmp_path / "b", **settings)
    assert train(manifest, interrupted, stop=lambda step: step == 2).stopped_early
    resumed = train(manifest, interrupted.replace(resume="latest"))
    for a, b in zip(straight.lora_files, resumed.lora_files, strict=True):
        expected, got = load_file(a), load_file(b)
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


@pytest.mark.slow
def test_init_weights_start_from_an_embedding_file_or_a_bundling_lora(manifest: Path, tmp_path: Path,
                                                                      tiny_sd15: Path) -> None:
    first = train(manifest, _config(tiny_sd15, tmp_path / "a", max_steps=1, algo="lora", lr=1e-3))
    lora_file, embedding_file = first.lora_files[0], first.lora_files[-1]
    start = load_file(embedding_file)["emb_params"]
    # the embedding alone from the embedding file: no init word needed, the file's vector count wins
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "b"), "embedding": NAME,
                                "init_weights": str(embedding_file), "max_steps": 1, "embedding_lr": 1e-12,
                                "vectors": 3})
    base = load_model(config, "cpu")
    train(manifest, config, base=base)
    assert torch.allclose(load_file(tmp_path / "b" / f"{NAME}.safetensors")["emb_params"], start, atol=1e-6)
    # pivotal tuning from the LoRA: its layers and its bundled embedding
    config = _config(tiny_sd15, tmp_path / "c", max_steps=1, algo="lora", init_weights=str(lora_file),
                     embedding_lr=1e-12, lr=1e-12)
    train(manifest, config)
    assert torch.allclose(load_file(tmp_path / "c" / f"{NAME}.safetensors")["emb_params"], start, atol=1e-6)
    again = load_file(tmp_path / "c" / "lora.safetensors")
    original = load_file(lora_file)
    assert all(torch.allclose(again[k].float(), original[k].float(), atol=1e-3) for k in original)


def test_prompts_expand_a_multi_vector_name_as_diffusers_does(tiny_sd15: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd15 / "tokenizer")
    tokenizer.add_tokens([NAME, f"{NAME}_1", f"{NAME}_2"])
    assert expand_prompt(tokenizer, f"{NAME}, 1girl, ZQX smile") == \
        f"{NAME} {NAME}_1 {NAME}_2, 1girl, {NAME} {NAME}_1 {NAME}_2 smile"
    assert expand_prompt(tokenizer, f"{NAME}x {NAME}_1") == f"{NAME}x {NAME}_1"


@pytest.mark.parametrize(("args", "message"), [
    (["--vectors", "0"], "--vectors must be at least 1"),
    (["--init-word", " "], "tokenizes to nothing"),
    (["--embedding", "woman"], "'woman' is already a token"),
    (["--embedding", "sks_1", "--vectors", "1"], None),
    (["--embedding", "Zqx"], "lowercase"),
    (["--init-word", None], "needs --init-word"),
    (["--embedding-steps", "5"], "--embedding-steps freezes the embedding"),
])
def test_bad_embedding_input_is_one_line_before_any_model_loads(manifest: Path, tmp_path: Path, tiny_sd15: Path,
                                                                monkeypatch: pytest.MonkeyPatch, args: list,
                                                                message: str | None) -> None:
    import train.model

    def no_loading(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train.model, "load_base", no_loading)
    options = {"--embedding": NAME, "--init-word": "woman", "--vectors": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        options[flag] = value
    argv = ["train", str(manifest), "--base", str(tiny_sd15), "-o", str(tmp_path), "--dry-run"]
    argv += [x for flag, value in options.items() if value is not None for x in (flag, value)]
    result = CliRunner().invoke(cli.app, argv)
    if message is None:  # a name whose tokens are new is accepted
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_manifest_without_a_trigger_is_refused_before_the_model_loads(testdata: Path, tmp_path: Path,
                                                                         tiny_sd15: Path) -> None:
    from prep.dataset import ManifestOptions, build_manifest, write_manifest

    folder = make_dataset(testdata, tmp_path / "ds").parent
    bare = write_manifest(build_manifest(folder, ManifestOptions(trigger="")), folder / "manifest.json")
    result = CliRunner().invoke(cli.app, ["train", str(bare), "--base", str(tiny_sd15), "--embedding", NAME,
                                          "--init-word", "woman", "--dry-run"])
    assert result.exit_code != 0 and "no trigger word" in result.output


def test_an_sd_scripts_textual_inversion_config_trains_the_embedding_alone(tmp_path: Path) -> None:
    (tmp_path / "ti.toml").write_text('token_string = "zqx"\ninit_word = "woman"\nnum_vectors_per_token = 3\n'
                                      'learning_rate = 5e-4\nmax_train_steps = 10\nresolution = 64\n'
                                      'use_object_template = false\n')
    config = load_config(tmp_path / "ti.toml")
    e = config.embedding
    assert (e.embedding, e.init_word, e.vectors, e.embedding_lr, e.pivotal) == ("zqx", "woman", 3, 5e-4, False)
    (tmp_path / "templ.toml").write_text('token_string = "zqx"\ninit_word = "woman"\nuse_style_template = true\n'
                                         'resolution = 64\n')
    with pytest.raises(UsageError, match="prompt templates"):
        load_config(tmp_path / "templ.toml")


def test_added_tokens_do_not_move_the_pooled_output_off_the_end_token(tiny_sdxl: Path) -> None:
    """The original CLIP configs' eos_token_id = 2 pools at the largest id, which an added token would be."""
    base = load_base(tiny_sdxl)
    encoder = base.text_encoders[1]
    prompt = f"{NAME}, 1girl"
    expected = encode_prompt(base, tokenize(base, ["woman, 1girl"])).pooled
    legacy = [m for m in encoder.modules() if hasattr(m, "eos_token_id")]
    for module in legacy:
        module.eos_token_id = 2
    load_embedding(base, read_embedding_tensors(base, "woman"))
    assert all(m.eos_token_id == base.tokenizers[1].eos_token_id for m in legacy)
    assert torch.allclose(encode_prompt(base, tokenize(base, [prompt])).pooled, expected, atol=1e-5)


def read_embedding_tensors(base, word: str):
    """An embedding whose one vector per encoder is `word`'s own token embedding."""
    from train.embedding import embedding_from_tensors

    vectors = []
    for tokenizer, encoder in zip(base.tokenizers, base.text_encoders, strict=True):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        vectors.append(encoder.get_input_embeddings().weight[ids[:1]].detach().clone())
    return embedding_from_tensors({"clip_l": vectors[0], "clip_g": vectors[1]}, NAME)


def test_an_embedding_of_another_family_is_refused(tmp_path: Path, tiny_sd15: Path) -> None:
    from safetensors.torch import save_file

    from prep.errors import ModelMismatch

    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, tmp_path / "xl.safetensors")
    base = load_base(tiny_sd15)
    with pytest.raises(ModelMismatch, match="is for SDXL, the base model is SD 1.x"):
        load_embedding(base, read_embedding(tmp_path / "xl.safetensors"))
    assert "xl" not in base.tokenizers[0].get_vocab()


# ---------------------------------------------------------------- learning rates (issue 22)

TI = {"embedding": NAME, "init_word": "woman"}


@pytest.mark.parametrize(("settings", "lr", "embedding_rate"), [
    (TI, 5e-3, 5e-3),  # alone, nothing given: the one rate defaults to textual inversion's 5e-3
    ({**TI, "lr": 1e-3}, 1e-3, 1e-3),  # alone: --lr is the embedding's
    ({**TI, "embedding_lr": 2e-3}, 2e-3, 2e-3),  # alone: --embedding-lr is the run's one rate
    ({**TI, "lr": 1e-3, "embedding_lr": 2e-3}, 2e-3, 2e-3),  # alone: --embedding-lr wins, a note says so
    ({**TI, "optimizer": "prodigy", "lr": 1.0}, 1.0, 1.0),
    ({**TI, "algo": "lora"}, 1e-4, 5e-3),  # pivotal: --lr the LoRA's, the embedding at its 5e-3
    ({**TI, "algo": "lora", "lr": 1e-3, "embedding_lr": 2e-2}, 1e-3, 2e-2),
    ({}, 1e-4, None),
])
def test_the_embedding_trains_at_its_own_rate_or_lr_alone(settings: dict, lr: float,
                                                          embedding_rate: float | None) -> None:
    from train.config import embedding_lr

    notes: list[str] = []
    config = load_config(None, settings, notes=notes)
    assert (config.optimizer.lr, embedding_lr(config)) == (lr, embedding_rate)
    assert ("embedding_lr" in settings and "lr" in settings and "algo" not in settings) == \
        any("--lr 0.001 is not used" in n for n in notes)
    assert config.replace(max_steps=3).optimizer.lr == lr  # a later override keeps the resolved rate
    rows = {(section, key): value for section, key, value in config.rows()}
    assert rows[("optimizer", "lr")] == lr and rows[("embedding", "embedding_lr")] == embedding_rate


def test_replace_gives_textual_inversion_alone_its_rates() -> None:
    from train.config import TrainConfig, embedding_lr

    assert TrainConfig().replace(**TI).optimizer.lr == 5e-3
    assert embedding_lr(TrainConfig().replace(**TI, lr=1e-3)) == 1e-3
    assert embedding_lr(load_config(None, TI).replace(lr=2e-4)) == 2e-4


@pytest.mark.parametrize(("settings", "rates"), [
    ({"lr": 1e-3}, [1e-3]),
    ({"lr": 1e-3, "embedding_lr": 2e-3}, [2e-3]),
    ({"algo": "lora", "lr": 1e-3, "train_text_encoder": True, "text_encoder_lr": 3e-4}, [1e-3, 3e-4, 5e-3]),
    ({"algo": "lora", "lr": 1e-3, "embedding_lr": 2e-2}, [1e-3, 2e-2]),
])
def test_the_optimizer_groups_train_at_the_stated_rates(tiny_sd15: Path, tmp_path: Path, settings: dict,
                                                        rates: list[float]) -> None:
    from train.embedding import add_embedding_network, embedding_metadata
    from train.optim import training_optimizer

    config = _config(tiny_sd15, tmp_path, **settings)
    base = load_model(config, "cpu")
    network, _ = add_embedding_network(base, config)
    optimizer, _ = training_optimizer(base.unet, network, config)
    assert [g["lr"] for g in optimizer.param_groups] == rates
    assert optimizer.param_groups[-1]["params"] == network.embedding.params
    metadata = embedding_metadata(config, network.embedding, 0)
    assert metadata["loraprep.learning_rate"] == rates[-1]
    rows = {(section, key): value for section, key, value in config.rows()}
    assert rows[("embedding", "embedding_lr")] == rates[-1] and rows[("optimizer", "lr")] == rates[0]


def test_dry_run_table_states_the_embedding_rate(manifest: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    argv = ["train", str(manifest), "--base", str(tiny_sd15), "-o", str(tmp_path), "--dry-run",
            "--embedding", NAME, "--init-word", "woman", "--lr", "0.0007"]
    result = CliRunner().invoke(cli.app, argv, terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "embedding_lr" in line or "│ lr " in line]
    assert len(rows) == 2 and all("0.0007" in line for line in rows), rows
