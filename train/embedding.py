"""Textual inversion and pivotal tuning: a new word NAME whose N token vectors train, alone or beside a LoRA.

Why new tokens rather than new rows of the embedding matrix: the tokenizer gets NAME, NAME_1, …
NAME_{N-1} as added tokens (diffusers' `load_textual_inversion` names them so), and a prompt's NAME
is expanded to all of them where it stands (`expand_prompt`), which puts the N vectors exactly where
the WebUI and ComfyUI put an embedding's vectors. The text encoder's own embedding stays untouched:
`TokenVectors` looks the new ids up in its own [N, D] parameter, so only N·D numbers train and the
optimizer holds state for nothing else.

Files, in the conventions the clients read:
- SD1/SD2: `{"emb_params": [N, 768|1024]}` (WebUI, ComfyUI; diffusers with `token=NAME`).
- SDXL: `{"clip_l": [N, 768], "clip_g": [N, 1280]}` (WebUI, ComfyUI; diffusers loads each half
  into its encoder).
- In a LoRA (pivotal tuning) the WebUI's bundled keys: `bundle_emb.NAME.string_to_param.*` (SD1/SD2)
  or `bundle_emb.NAME.clip_l` / `bundle_emb.NAME.clip_g` (SDXL); the WebUI registers them as the
  embedding NAME while the LoRA is in the prompt.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from prep.errors import ModelMismatch, UsageError
from train.config import TrainConfig, embedding_lr

ENCODER_KEYS = ("clip_l", "clip_g")  # SDXL: text_encoder, text_encoder_2
SD_KEY = "emb_params"
BUNDLE_PREFIX = "bundle_emb."
BUNDLE_SD_SUFFIX = "string_to_param.*"


def token_names(name: str, vectors: int) -> list[str]:
    """The tokens an N-vector NAME adds: NAME, NAME_1, …, NAME_{N-1} (diffusers' multi-vector names)."""
    return [name] + [f"{name}_{i}" for i in range(1, vectors)]


@functools.lru_cache(maxsize=64)
def _expansions(added: tuple[str, ...]) -> tuple[tuple[re.Pattern[str], str], ...]:
    names = set(added)
    found = []
    for token in added:
        if f"{token}_1" in names:
            tokens = [token]
            while f"{token}_{len(tokens)}" in names:
                tokens.append(f"{token}_{len(tokens)}")
            found.append((re.compile(rf"(?<![\w<]){re.escape(token)}(?![\w>])", re.IGNORECASE), " ".join(tokens)))
    return tuple(found)


def expand_prompt(tokenizer: Any, text: str) -> str:
    """`text` with each multi-vector NAME the tokenizer knows replaced by `NAME NAME_1 … NAME_{N-1}`,
    as diffusers' pipelines do: all N vectors then stand where the word stood."""
    added = tuple(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for pattern, tokens in _expansions(added):
        text = pattern.sub(tokens, text)
    return text


# ---------------------------------------------------------------- checks before any model loads


def base_tokenizers(config: TrainConfig) -> list[Any] | None:
    """The base model's tokenizer(s) alone (no weights), for the checks that need them; None when
    they are not on disk apart from the weights (a single-file base without --base-config)."""
    from transformers import CLIPTokenizer

    from train.plan import inspect_base

    checked = inspect_base(config)
    folder = checked.path if checked.kind != "file" else (Path(config.model.base_config) if config.model.base_config
                                                          else None)
    if folder is None:
        return None
    names = ("tokenizer", "tokenizer_2") if checked.family == "sdxl" else ("tokenizer",)
    if not all((folder / n).is_dir() for n in names):
        return None
    return [CLIPTokenizer.from_pretrained(str(folder / n)) for n in names]


def check_tokens(tokenizers: Sequence[Any], name: str, vectors: int, init_word: str | None) -> list[list[int]]:
    """Refuse a NAME (or NAME_i) the tokenizer already has as a token, and an init word that
    tokenizes to nothing; returns the init word's token ids per tokenizer."""
    init_ids = []
    for tokenizer in tokenizers:
        vocab = tokenizer.get_vocab()
        for token in token_names(name, vectors):
            if token in vocab or f"{token}</w>" in vocab:
                raise UsageError(f"embedding name '{name}' is already a token of the base model's tokenizer "
                                 f"('{token}'), so the embedding would replace a word the model knows",
                                 hint=f"pick a made-up word, such as '{name}x' or 'zq{name}'")
        if init_word is not None:
            ids = tokenizer(init_word, add_special_tokens=False).input_ids
            if not ids:
                raise UsageError(f"--init-word '{init_word}' tokenizes to nothing, so it gives the vectors no start",
                                 hint="use a real word close to the concept, such as woman, dog or painting")
            init_ids.append(list(ids))
    return init_ids


def check_embedding(config: TrainConfig, manifest_path: str | Path | None = None) -> None:
    """What can be refused before the model loads: the manifest has a trigger for NAME to replace,
    and NAME and the init word against the tokenizer (loaded alone, when it is on disk)."""
    e = config.embedding
    if not e.embedding:
        return
    if manifest_path is not None:
        from prep.records import load_manifest

        path = Path(manifest_path)
        manifest = load_manifest(path / "manifest.json" if path.is_dir() else path)
        if not manifest.trigger:
            raise UsageError(f"the manifest has no trigger word for the embedding '{e.embedding}' to replace",
                             hint="rebuild the manifest with a trigger (`loraprep manifest DIR --trigger WORD`)")
    tokenizers = base_tokenizers(config)
    if tokenizers is not None:
        check_tokens(tokenizers, e.embedding, e.vectors, e.init_word)


# ---------------------------------------------------------------- the trained vectors


class TokenVectors(torch.nn.Module):
    """A text encoder's token embedding plus rows for added token ids, looked up in `vectors` (the
    only trainable numbers); `frozen` stops their gradient (pivotal tuning's --embedding-steps)."""

    def __init__(self, original: torch.nn.Module, token_ids: Sequence[int], vectors: torch.Tensor) -> None:
        super().__init__()
        self.original = original
        self.register_buffer("token_ids", torch.tensor(list(token_ids), dtype=torch.long), persistent=False)
        self.vectors = torch.nn.Parameter(vectors.detach().float().clone())
        self.frozen = False

    @property
    def weight(self) -> torch.Tensor:
        """The original table (code that reads `get_input_embeddings().weight` for its width or dtype)."""
        return self.original.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        match = input_ids.unsqueeze(-1) == self.token_ids.to(input_ids.device)
        hit = match.any(-1)
        found = self.original(torch.where(hit, torch.zeros_like(input_ids), input_ids))
        vectors = self.vectors.detach() if self.frozen else self.vectors
        new = (match.to(vectors.dtype) @ vectors.to(input_ids.device)).to(found.dtype)
        return torch.where(hit.unsqueeze(-1), new, found)


def init_vectors(encoder: Any, init_ids: Sequence[int], vectors: int) -> Any:
    """The WebUI's start: the init word's first N token embeddings, spread over the N vectors."""
    table = encoder.get_input_embeddings()
    with torch.no_grad():
        found = table(torch.tensor(list(init_ids)[:vectors], device=table.weight.device)).float().cpu()
    return torch.stack([found[i * len(found) // vectors] for i in range(vectors)])


def attach(base: Any, name: str, per_encoder: Sequence[Any]) -> list[Any]:
    """Add NAME's tokens to each tokenizer and its vectors (one [N, D] tensor per encoder) to each
    encoder; returns the TokenVectors modules (trainable)."""
    modules = []
    count = int(per_encoder[0].shape[0])
    for tokenizer, encoder, vectors in zip(base.tokenizers, base.text_encoders, per_encoder, strict=True):
        tokens = token_names(name, count)
        if any(t in tokenizer.get_vocab() for t in tokens):
            raise UsageError(f"embedding name '{name}' is already a token of this tokenizer",
                             hint="load each embedding once, under a name the model does not know")
        table = encoder.get_input_embeddings()
        if vectors.shape[-1] != table.weight.shape[-1]:
            raise ModelMismatch(f"embedding '{name}' has {vectors.shape[-1]}-wide vectors, the base model's text "
                                f"encoder takes {table.weight.shape[-1]}",
                                hint="use an embedding trained for this model family")
        tokenizer.add_tokens(tokens)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        module = TokenVectors(table, ids, vectors).to(table.weight.device)
        encoder.set_input_embeddings(module)
        pool_at_end_token(encoder, tokenizer.eos_token_id)
        modules.append(module)
    return modules


def pool_at_end_token(encoder: Any, eos_token_id: int) -> None:
    """Pool at the end token, found by its id. Configs of the original CLIP weights (SD1.5, SDXL's
    encoders) say eos_token_id = 2, which makes transformers pool at the largest token id, and added
    tokens have larger ids than the end token: SDXL's pooled embedding would come from NAME's position.
    The WebUI and ComfyUI pool at the end token whatever the prompt holds, and so must training."""
    for module in encoder.modules():
        if getattr(module, "eos_token_id", None) == 2 and eos_token_id != 2:
            module.eos_token_id = eos_token_id


@dataclass
class TrainedEmbedding:
    """The embedding being trained: its name, one TokenVectors per text encoder, when it freezes."""

    name: str
    family: str
    modules: list[Any]
    steps: int | None = None

    @property
    def params(self) -> list[Any]:
        return [m.vectors for m in self.modules]

    @property
    def state_module(self) -> Any:
        """The vectors as one module (`embedding.vN`), what checkpoints save and resume load."""
        holder = torch.nn.Module()
        for i, module in enumerate(self.modules):
            holder.register_parameter(f"v{i}", module.vectors)
        return holder

    def freeze_after(self, step: int) -> None:
        """Pivotal tuning's --embedding-steps: from that step on only the LoRA trains."""
        frozen = self.steps is not None and step >= self.steps
        for module in self.modules:
            module.frozen = frozen

    def tensors(self) -> dict[str, Any]:
        """The embedding file's tensors (fp32, on the host)."""
        return embedding_tensors(self.family, [m.vectors.detach().float().cpu().contiguous() for m in self.modules])

    def bundle(self) -> dict[str, Any]:
        """The WebUI's bundled-embedding keys for a LoRA file."""
        return bundle_tensors(self.name, self.tensors())

    def param_group(self, config: TrainConfig) -> dict[str, Any]:
        return {"params": self.params, "lr": embedding_lr(config), "weight_decay": 0.0}


def embedding_tensors(family: str, per_encoder: Sequence[Any]) -> dict[str, Any]:
    if family == "sdxl":
        return dict(zip(ENCODER_KEYS, per_encoder, strict=True))
    return {SD_KEY: per_encoder[0]}


def bundle_tensors(name: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
    if SD_KEY in tensors:
        return {f"{BUNDLE_PREFIX}{name}.{BUNDLE_SD_SUFFIX}": tensors[SD_KEY]}
    return {f"{BUNDLE_PREFIX}{name}.{k}": v for k, v in tensors.items()}


# ---------------------------------------------------------------- reading embedding files


@dataclass(frozen=True)
class EmbeddingFile:
    """An embedding read from disk: its vectors per text encoder, the family they fit, and its name."""

    name: str
    family: str  # sd1 | sd2 | sdxl (by vector width)
    vectors: list[Any]
    metadata: dict[str, str]

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])


def _family_of(tensors: Mapping[str, Any]) -> str | None:
    if set(tensors) >= set(ENCODER_KEYS):
        return "sdxl"
    if len(tensors) == 1:
        width = int(next(iter(tensors.values())).shape[-1])
        return {768: "sd1", 1024: "sd2"}.get(width, "sd")
    return None


def embedding_from_tensors(tensors: Mapping[str, Any], name: str, metadata: Mapping[str, str] | None = None,
                           where: str = "the file") -> EmbeddingFile:
    """An embedding from a file's tensors: `emb_params`/one tensor (SD1/SD2), `clip_l`+`clip_g` (SDXL),
    or the WebUI's `string_to_param.*`."""
    family = _family_of(tensors)
    if family is None:
        raise ModelMismatch(f"{where} is not a textual-inversion embedding (expected emb_params, or clip_l and clip_g)")
    vectors = [tensors[k] for k in ENCODER_KEYS] if family == "sdxl" else [next(iter(tensors.values()))]
    vectors = [v.reshape(-1, v.shape[-1]).float() for v in vectors]
    return EmbeddingFile(name, family, vectors, dict(metadata or {}))


def is_embedding_file(path: str | Path) -> bool:
    """Whether a .safetensors file holds an embedding (and no LoRA)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
    except Exception:
        return False
    # diffusers' own files hold one tensor named by its token ("<cat-toy>"); model weights have dotted names
    return keys == {SD_KEY} or keys == set(ENCODER_KEYS) or (len(keys) == 1 and "." not in next(iter(keys)))


def read_embedding(path: str | Path) -> EmbeddingFile:
    """An embedding file (safetensors); its name is the file's stem, as the WebUI and ComfyUI name it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"embedding file {path} does not exist")
    if path.suffix != ".safetensors":
        raise UsageError(f"{path.name}: only .safetensors embeddings are read (pickles can run code)")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata() or {})
    return embedding_from_tensors(tensors, path.stem, metadata, path.name)


def bundled_embeddings(tensors: Mapping[str, Any], where: str = "the LoRA") -> dict[str, EmbeddingFile]:
    """The embeddings bundled in a LoRA file's `bundle_emb.NAME.*` keys, by name."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(BUNDLE_PREFIX):
            name, _, rest = key[len(BUNDLE_PREFIX):].partition(".")
            found.setdefault(name, {})[rest.removeprefix("string_to_param.") if rest != SD_KEY else rest] = value
    return {name: embedding_from_tensors(parts, name, where=f"{where}: bundle_emb.{name}")
            for name, parts in found.items()}


def load_embedding(base: Any, embedding: EmbeddingFile, name: str | None = None) -> list[Any]:
    """Put an embedding into a loaded base model (`generate --embedding`, bundled embeddings): its
    tokens into the tokenizers, its vectors into the encoders, nothing trainable."""
    from train.model import FAMILY_LABELS

    if (embedding.family == "sdxl") != base.is_sdxl:
        family = FAMILY_LABELS.get(embedding.family, "SD 1.x / 2.x")
        raise ModelMismatch(f"embedding '{embedding.name}' is for {family}, "
                            f"the base model is {FAMILY_LABELS[base.family]}",
                            hint="use an embedding trained for this model family")
    modules = attach(base, name or embedding.name, embedding.vectors)
    for module in modules:
        module.vectors.requires_grad_(False)
    return modules


# ---------------------------------------------------------------- training setup


def with_embedding_captions(plan: Any, config: TrainConfig) -> Any:
    """The plan with the manifest's trigger replaced by NAME in every caption (and as the trigger the
    caption rules keep in place); `expand_prompt` turns NAME into its N tokens when it is tokenized."""
    data = plan.data
    trigger, name = data.manifest.trigger, config.embedding.embedding
    if not trigger:
        raise UsageError(f"the manifest has no trigger word for the embedding '{name}' to replace",
                         hint="rebuild the manifest with a trigger (`loraprep manifest DIR --trigger WORD`)")
    pattern = re.compile(rf"(?<![\w]){re.escape(trigger)}(?![\w])")
    examples = tuple(replace(e, caption=pattern.sub(name, e.caption)) for e in data.examples)
    if not any(name in e.caption for e in examples if not e.is_reg):
        raise UsageError(f"no caption holds the trigger '{trigger}' for the embedding '{name}' to replace",
                         hint="put the trigger into the captions (`loraprep captions` …) and rebuild the manifest")
    return replace(plan, data=replace(data, manifest=replace(data.manifest, trigger=name), examples=examples))


def new_embedding(base: Any, config: TrainConfig) -> tuple[TrainedEmbedding, list[str]]:
    """NAME's vectors on `base`: from --init-weights (an embedding file, or a LoRA bundling NAME) when
    it has them, else from the init word."""
    e = config.embedding
    name = e.embedding or ""
    start, notes = _from_init_weights(config, base)
    if start is None:
        init_ids = check_tokens(base.tokenizers, name, e.vectors, e.init_word)
        start = [init_vectors(encoder, ids, e.vectors) for encoder, ids in zip(base.text_encoders, init_ids,
                                                                                strict=True)]
    else:
        check_tokens(base.tokenizers, name, int(start[0].shape[0]), None)
    modules = attach(base, name, start)
    return TrainedEmbedding(name, base.family, modules, e.embedding_steps if e.pivotal else None), notes


def _from_init_weights(config: TrainConfig, base: Any) -> tuple[list[Any] | None, list[str]]:
    path = config.network.init_weights
    name = config.embedding.embedding or ""
    if not path:
        return None, []
    if is_embedding_file(path):
        found = read_embedding(path)
        where = f"--init-weights {Path(path).name}"
    else:
        from train.export import read_lora

        bundled = bundled_embeddings(read_lora(path).tensors, Path(path).name)
        if name not in bundled:
            if config.embedding.init_word is None:
                raise UsageError(f"--init-weights {Path(path).name} bundles no embedding '{name}' to start from",
                                 hint="add --init-word WORD")
            return None, [f"--init-weights {Path(path).name} bundles no embedding '{name}'; it starts from "
                          f"--init-word {config.embedding.init_word}"]
        found, where = bundled[name], f"--init-weights {Path(path).name} (bundle_emb.{name})"
    if (found.family == "sdxl") != base.is_sdxl:
        raise ModelMismatch(f"{where} is an embedding for another model family than the base",
                            hint="start from an embedding trained on this family")
    notes = [f"embedding '{name}' starts from {where}: {found.count} vector{'s' if found.count != 1 else ''}"]
    if found.count != config.embedding.vectors:
        notes.append(f"--vectors {config.embedding.vectors} gives way to the file's {found.count}")
    return found.vectors, notes


def add_embedding_network(base: Any, config: TrainConfig) -> tuple[Any, list[str]]:
    """The network of a run with an embedding: the embedding alone (textual inversion; base frozen), or
    the LoRA as the settings make it plus the embedding (pivotal tuning)."""
    from train.network import Network, add_lora

    notes: list[str] = []
    if not config.embedding.pivotal:
        base.unet.requires_grad_(False)
        for encoder in base.text_encoders:
            encoder.requires_grad_(False)
        network = Network(None)
    elif config.network.init_weights and not is_embedding_file(config.network.init_weights):
        from train.from_weights import add_lora_from_file

        network, notes = add_lora_from_file(base, config.network.init_weights, config.network)
    elif config.network.init_weights:
        raise UsageError("pivotal tuning starts its LoRA from --init-weights, and that file is an embedding",
                         hint="pass a LoRA file (a pivotal-tuning LoRA bundles its embedding), or drop --algo "
                              "to train the embedding alone")
    else:
        network = add_lora(base.unet, base.text_encoders, config.network)
    embedding, more = new_embedding(base, config)
    network.embedding = embedding
    return network, notes + more + [
        f"embedding '{embedding.name}': {len(embedding.modules) * embedding.params[0].shape[0]} vector(s) of "
        f"{', '.join(str(p.shape[1]) for p in embedding.params)} numbers train"
        + (f" (frozen after step {embedding.steps})" if embedding.steps else "")]


# ---------------------------------------------------------------- writing


def save_embedding(path: Path, embedding: TrainedEmbedding, metadata: Mapping[str, Any]) -> Path:
    """Write the embedding file (atomic, 0644)."""
    from train.export import write_safetensors

    meta = {k: str(v) for k, v in metadata.items() if v not in (None, "")}
    write_safetensors(path, embedding.tensors(), meta)
    return path


def embedding_metadata(config: TrainConfig, embedding: TrainedEmbedding, step: int) -> dict[str, Any]:
    return {"loraprep.format": "embedding", "loraprep.embedding": embedding.name,
            "loraprep.init_word": config.embedding.init_word, "loraprep.family": embedding.family,
            "loraprep.vectors": embedding.params[0].shape[0], "loraprep.steps": step,
            "loraprep.pivotal": str(bool(config.embedding.pivotal)).lower(),
            "loraprep.learning_rate": embedding_lr(config)}


def embedding_stem(stem: Path, config: TrainConfig) -> Path:
    """The embedding file's stem: named NAME (the WebUI and ComfyUI call it by its file name), with
    the checkpoint's step suffix when `stem` has one."""
    name = config.embedding.embedding or ""
    return stem.with_name(name + stem.name.removeprefix(config.run.name)) if stem.name.startswith(
        config.run.name) else stem.with_name(name)


# ---------------------------------------------------------------- `lora info`


EMBEDDING_CLIENTS = {
    "loraprep": "loraprep generate --embedding FILE; write NAME in the prompt",
    "WebUI / Forge": "put the file in embeddings/ and write NAME (the file's name) in the prompt",
    "ComfyUI": "put the file in models/embeddings/ and write embedding:NAME in the prompt",
    "diffusers": "pipe.load_textual_inversion(FILE, token=\"NAME\")",
}
SDXL_DIFFUSERS = ("pipe.load_textual_inversion(f[\"clip_l\"], token=\"NAME\", text_encoder=pipe.text_encoder, "
                  "tokenizer=pipe.tokenizer) and f[\"clip_g\"] with text_encoder_2/tokenizer_2 (f = load_file(FILE))")
BUNDLE_CLIENTS = {
    "loraprep": "loraprep generate --lora FILE applies it; write NAME in the prompt",
    "WebUI / Forge": "exact: registered as NAME while <lora:…> is in the prompt; write NAME in the prompt",
    "ComfyUI": "not with the LoRA: its LoRA loader skips bundle_emb keys; load the separate NAME.safetensors "
               "(embedding:NAME; recent ComfyUI also reads this file's bundle from models/embeddings/)",
    "diffusers": "no: use the separate NAME.safetensors with load_textual_inversion",
}


def embedding_rows(embedding: EmbeddingFile) -> list[tuple[str, str]]:
    """`lora info` of an embedding file: what it is and how each app applies it."""
    from train.model import FAMILY_LABELS

    clients = dict(EMBEDDING_CLIENTS)
    if embedding.family == "sdxl":
        clients["diffusers"] = SDXL_DIFFUSERS
    trained = embedding.metadata.get("loraprep.embedding")
    rows = [("format", "textual-inversion embedding (safetensors)"),
            ("family", FAMILY_LABELS.get(embedding.family, "SD 1.x / 2.x")),
            ("name", embedding.name + (f" (trained as '{trained}')" if trained and trained != embedding.name else "")),
            ("vectors", f"{embedding.count} per encoder, "
                        + ", ".join(f"{v.shape[1]} wide" for v in embedding.vectors))]
    rows += [(f"applies in {client}", how.replace("NAME", embedding.name)) for client, how in clients.items()]
    return rows


def bundle_rows(bundled: Mapping[str, int]) -> list[tuple[str, str]]:
    """`lora info` rows for a LoRA's bundled embeddings (pivotal tuning), from name → vectors."""
    if not bundled:
        return []
    names = ", ".join(f"{n} ({count} vector{'s' if count != 1 else ''})" for n, count in bundled.items())
    rows = [("bundled embeddings", names)]
    rows += [(f"embedding in {client}", how.replace("NAME", "/".join(bundled)))
             for client, how in BUNDLE_CLIENTS.items()]
    return rows


def save_run_embedding(stem: Path, base: Any, network: Any, config: TrainConfig, metadata: Mapping[str, Any],
                       step: int) -> list[Path]:
    """A run's files at `stem`: the embedding file NAME(-stepN).safetensors, and with pivotal tuning
    first the LoRA files, the kohya one bundling the embedding."""
    from train.export import save_lora

    embedding = network.embedding
    files: list[Path] = []
    if config.embedding.pivotal:
        encoders = base.text_encoders if network.text_encoder_params else ()
        files += [Path(f) for f in save_lora(stem, unet=base.unet, text_encoders=encoders, base=base,
                                             network_config=config.network, metadata=metadata,
                                             bundle=embedding.bundle())]
    path = embedding_stem(stem, config).with_suffix(".safetensors")
    files.append(save_embedding(path, embedding, embedding_metadata(config, embedding, step)))
    return files


def load_embeddings(base: Any, files: Sequence[str | Path], lora: str | Path | None = None) -> list[str]:
    """`generate`: the embedding files (named by their file names) and a LoRA's bundled embeddings
    into `base`; returns what was loaded, to report."""
    notes = []
    for path in files:
        found = read_embedding(path)
        load_embedding(base, found)
        notes.append(f"embedding '{found.name}' ({found.count} vector{'s' if found.count != 1 else ''}): "
                     f"write {found.name} in the prompt")
    if lora is not None and Path(lora).suffix == ".safetensors" and Path(lora).is_file():
        from safetensors import safe_open

        with safe_open(str(lora), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(BUNDLE_PREFIX)}
        for name, found in bundled_embeddings(tensors, Path(lora).name).items():
            if any(name in tokenizer.get_vocab() for tokenizer in base.tokenizers):
                notes.append(f"bundled embedding '{name}' skipped: an --embedding of that name is loaded")
                continue
            load_embedding(base, found)
            plural = "s" if found.count != 1 else ""
            notes.append(f"the LoRA bundles embedding '{name}' ({found.count} vector{plural}): "
                         f"write {name} in the prompt")
    return notes
