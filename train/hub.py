"""`--push-to-hub REPO` and `loraprep lora push OUTPUT REPO`: a run's LoRA files, model card and
samples uploaded to a Hugging Face model repository with huggingface_hub.

Why the checks come first: a misspelt repo or an expired token must fail before hours of training,
not after; so `check_hub` asks who the token belongs to and creates (or finds) the repository at
start. An upload that fails later changes nothing local and names the command that retries it.
HF_ENDPOINT points the client at another server (a mirror, or the tests' stand-in).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.errors import LoraprepError, UsageError

# What a run uploads: the LoRA files (final and per-save), the card, sample grids and the loss plot;
# never checkpoints (optimizer state) or caches.
UPLOAD_PATTERNS = ("*.safetensors", "README.md", "samples/*.png", "loss.png")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


class HubError(LoraprepError):
    """The Hub refused the token or the repository, or an upload failed."""


def check_repo_id(repo: str) -> str:
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or repo.endswith((".", "-")):
        raise UsageError(f"'{repo}' is not a Hub repository id", hint="write it as user/name (e.g. me/my-lora)")
    return repo


def read_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The token from --hub-token-file; None lets huggingface_hub use HF_TOKEN or the saved login."""
    if token_file is None:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the Hub token file {token_file}: {exc.strerror or exc}") from None
    if not token:
        raise UsageError(f"the Hub token file {token_file} is empty")
    return token


@dataclass(frozen=True)
class HubTarget:
    repo: str  # the full id, with the namespace the Hub gave it
    token: str | None
    endpoint: str | None
    url: str


def _api(token: str | None) -> Any:
    try:
        from huggingface_hub import HfApi
    except ImportError:  # a dependency of diffusers, so normally present
        raise UsageError("--push-to-hub needs the huggingface_hub package", hint="pip install huggingface_hub") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return HfApi(endpoint=endpoint, token=token), endpoint


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_hub(repo: str, *, private: bool = False, token_file: str | None = None) -> HubTarget:
    """Check the token and create the repository (or find it): before training, so a bad id or
    credential costs seconds. Raises HubError with what to fix."""
    check_repo_id(repo)
    token = read_token(token_file)
    api, endpoint = _api(token)
    try:
        user = api.whoami()
    except Exception as exc:  # noqa: BLE001 - any client error means "cannot push"; say which
        if type(exc).__name__ == "OfflineModeIsEnabled":
            raise HubError("the Hub cannot be reached: HF_HUB_OFFLINE is set",
                           hint="unset HF_HUB_OFFLINE to upload, or drop --push-to-hub") from None
        raise HubError(f"the Hub did not accept the token: {_reason(exc)}",
                       hint="log in with `hf auth login`, set HF_TOKEN, or pass --hub-token-file FILE "
                            "(a token with write access)") from None
    full = repo if "/" in repo else f"{user.get('name')}/{repo}"
    try:
        url = api.create_repo(full, private=True if private else None, exist_ok=True, repo_type="model")
    except Exception as exc:  # noqa: BLE001
        raise HubError(f"cannot create or use the Hub repository {full}: {_reason(exc)}",
                       hint="check the name, and that the token may write to that namespace") from None
    return HubTarget(full, token, endpoint, str(url))


def push_output(output: str | os.PathLike[str], target: HubTarget, *, message: str) -> str:
    """Upload OUTPUT's LoRA files, card and samples (UPLOAD_PATTERNS) in one commit; returns its URL.
    A failure raises HubError naming the retry command; no local file is touched either way."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(output)
    api, _ = _api(target.token)
    files = upload_files(folder)
    try:
        info = api.create_commit(repo_id=target.repo, repo_type="model", commit_message=message,
                                 operations=[CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
                                             for f in files])
    except Exception as exc:  # noqa: BLE001
        raise HubError(f"uploading {folder} to {target.repo} failed: {_reason(exc)}; every local file is kept",
                       hint=f"retry with `loraprep lora push {folder} {target.repo}`") from None
    return str(getattr(info, "commit_url", info))


def upload_files(folder: Path) -> list[str]:
    """OUTPUT's files that go up, relative POSIX paths: UPLOAD_PATTERNS, matched from OUTPUT (a
    pattern's `*` never reaches into subfolders such as checkpoints/)."""
    found = {p.relative_to(folder).as_posix() for pattern in UPLOAD_PATTERNS for p in folder.glob(pattern)
             if p.is_file() and not p.name.startswith(".")}
    return sorted(found)


def push_folder(output: str | os.PathLike[str], repo: str, *, private: bool = False,
                token_file: str | None = None) -> tuple[HubTarget, str]:
    """`loraprep lora push OUTPUT REPO`: check, then upload a finished (or interrupted) run's folder."""
    folder = Path(output)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a training output folder")
    if not any(folder.glob("*.safetensors")):
        raise UsageError(f"{folder} holds no LoRA file (*.safetensors) to upload")
    target = check_hub(repo, private=private, token_file=token_file)
    return target, push_output(folder, target, message=f"Upload {folder.name} with loraprep")
