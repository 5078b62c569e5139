"""`tunesmith export --push-to-hub OWNER/NAME`: the exported folder (a Hugging Face model, or a GGUF file, each with its
model card) uploaded to the Hugging Face Hub through `huggingface_hub`'s `HfApi`, as one commit.

The export is written first and stays on disk whatever happens to the upload, so a failed push loses nothing:
the one-line error says whether the token or the network was missing, and how to push the folder again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .errors import UserError
from .export import export_line, export_run


def _network_failure(exc: Exception) -> bool:
    """A connection that never got an answer (refused, unresolved, timed out), whichever HTTP client raised it."""
    return isinstance(exc, OSError) or any(c.__name__ in ("TransportError", "ConnectionError", "Timeout") for c in type(exc).__mro__)


def hub_token(repo_id: str, token: str | None = None) -> str:
    """The token to push with, checked with the repository's name before anything is exported."""
    from huggingface_hub import get_token

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--push-to-hub {repo_id}: name the repository as OWNER/NAME")
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then export again")
    return token


def push_to_hub(folder: Path, repo_id: str, private: bool = False, endpoint: str | None = None, token: str | None = None) -> str:
    """Create `repo_id` if needed (private if asked) and upload every file in `folder`; returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = hub_token(repo_id, token)
    again = f"the export is in {folder}; push it again with `hf upload {repo_id} {folder}`"
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=f"Upload {folder.name} with tunesmith")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = "the token is missing the write permission or is not valid" if status in (401, 403) else str(exc).splitlines()[0][:200]
        raise UserError(f"the Hub refused the upload ({status}: {hint}); {again}") from None
    except Exception as exc:
        if not _network_failure(exc):
            raise
        raise UserError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); {again}") from None
    return commit.commit_url


def export_and_push(run_dir: Path, repo_id: str, out: Path | None, dtype: str, gguf: bool, private: bool = False,
                    endpoint: str | None = None, log=print) -> str:
    """Export the run into `out` (or a temporary folder, removed once pushed) and push it; returns the commit's URL.

    The token is checked first, so a push that cannot happen exports nothing.
    """
    token = hub_token(repo_id)
    folder = out or Path(tempfile.mkdtemp(prefix="tunesmith-export-")) / "export"
    written = export_run(run_dir, folder, dtype, gguf=gguf)
    log(export_line(written, dtype, gguf, folder))
    url = push_to_hub(folder, repo_id, private, endpoint, token)
    if out is None:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return url
