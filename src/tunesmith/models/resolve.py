"""Turn a model spec (embedded name, .gguf file, local directory, run directory or hub id) into something loadable."""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from ..errors import UserError
from .embedded import EMBEDDED_NAME, convert_gguf, embedded_gguf_path

ALTERNATIVES = f"use {EMBEDDED_NAME} (embedded, works offline), a local Hugging Face directory or a .gguf file"


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user wrote
    path: str  # a local directory, or a hub id for from_pretrained
    local_files_only: bool = False
    trust_remote_code: bool = False


def tunesmith_home() -> Path:
    """Where converted models and prepared data are cached: $TUNESMITH_HOME or ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith")


def _hf_directory(path: Path) -> Path | None:
    """A model directory, or the `final/` model of a tunesmith run directory."""
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id that is not a valid repo name is simply not cached
        return False


def resolve_model(spec: str, trust_remote_code: bool = False, log: Callable[[str], None] = print) -> ResolvedModel:
    if spec == EMBEDDED_NAME:
        path = convert_gguf(embedded_gguf_path(), tunesmith_home(), log)
        return ResolvedModel(spec, str(path), True, trust_remote_code)
    local = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf"):
        if not local.is_file():
            raise UserError(f"model {spec}: no such .gguf file; {ALTERNATIVES}")
        return ResolvedModel(spec, str(convert_gguf(local.resolve(), tunesmith_home(), log)), True, trust_remote_code)
    if local.exists():
        directory = _hf_directory(local) if local.is_dir() else None
        if directory is None and (local / "checkpoints").is_dir():
            raise UserError(f"model {spec}: this tunesmith run has not finished (no final/ model yet); finish it with "
                            f"`tunesmith train --out {shlex.quote(spec)} --resume`" + (
                                f", or name its best model so far, {local / 'best'}" if (local / "best" / "config.json").is_file() else ""))
        if directory is None:
            raise UserError(f"model {spec}: not a Hugging Face model directory (no config.json) nor a tunesmith run; {ALTERNATIVES}")
        return ResolvedModel(spec, str(directory), True, trust_remote_code)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model {spec}: no such directory; {ALTERNATIVES}")
    if _hub_reachable():
        return ResolvedModel(spec, spec, False, trust_remote_code)
    if _in_hub_cache(spec):
        return ResolvedModel(spec, spec, True, trust_remote_code)
    raise UserError(f"model {spec}: no folder of that name here, and as a hub id: the Hugging Face hub cannot be reached and it "
                    f"is not in the local cache; {ALTERNATIVES}")
