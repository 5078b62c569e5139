"""`tunesmith export --push-to-hub OWNER/NAME`: the exported folder (a Hugging Face model, or a GGUF file, each with its
model card) uploaded to the Hugging Face Hub through `huggingface_hub`'s `HfApi`, as one commit.

The repository's name and the token are checked before anything is exported. An export written to `--out` stays on
disk whatever happens to the upload, so a failed push loses nothing: the one-line error says whether the token or
the network was missing, and how to push the folder again. Without `--out` the export goes to a temporary folder that
is removed however the command ends.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from .hf import export_line, export_run


def _network_failure(exc: Exception) -> bool:
    """A connection that never got an answer (refused, unresolved, timed out), whichever HTTP client raised it."""
    return isinstance(exc, OSError) or any(c.__name__ in ("TransportError", "ConnectionError", "Timeout") for c in type(exc).__mro__)


def hub_token(repo_id: str, token: str | None = None) -> str:
    """The token to push with, checked with the repository's name before anything is exported."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--push-to-hub {repo_id}: name the repository as OWNER/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--push-to-hub {repo_id}: not a valid repository name ({str(exc).splitlines()[0]}); "
                        "use letters, digits, '-', '_' and '.', as in OWNER/my-model") from None
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then export again")
    return token


def push_to_hub(folder: Path, repo_id: str, private: bool = False, endpoint: str | None = None, token: str | None = None,
                again: str | None = None) -> str:
    """Create `repo_id` if needed (private if asked) and upload every file in `folder`; returns the commit's URL.

    `again` is what a failure tells the user to do next (default: push the kept folder with `hf upload`).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = hub_token(repo_id, token)
    again = again or f"the export is in {folder}; push it again with `hf upload {repo_id} {folder}`"
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
    """Export the run into `out` (or a temporary folder, removed however this ends) and push it; returns the commit's URL.

    The repository's name and the token are checked first, so a push that cannot happen exports nothing.
    """
    token = hub_token(repo_id)
    temporary = None if out else Path(tempfile.mkdtemp(prefix="tunesmith-export-"))
    folder = out or temporary / "export"
    again = None if out else (f"nothing was kept; export with --out FOLDER to keep the export, then push it again with "
                              f"`hf upload {repo_id} FOLDER`")
    try:
        written = export_run(run_dir, folder, dtype, gguf=gguf)
        log(export_line(written, dtype, gguf, folder))
        return push_to_hub(folder, repo_id, private, endpoint, token, again)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
