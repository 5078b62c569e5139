"""`tunesmith export --push-to-hub`: the real `huggingface_hub` client against a local stand-in for the Hub's HTTP API.

The stand-in answers the calls an upload makes (create the repository, validate the card's YAML, ask each file's
upload mode, commit) the way the Hub documents them, and keeps what was committed, so the test compares the
uploaded bytes with the exported files. It asks for every file as a regular (base64) upload: the LFS and Xet
transfers of large files go to storage services a local test cannot stand in for.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunesmith.cli import main

from helpers import finished_run

TOKEN = "hf_standin_token"


class StandInHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.authorizations: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.authorizations.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.answer(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "repos", "create"]:
                    payload = json.loads(body)
                    repo = f"{payload['organization']}/{payload['name']}"
                    if repo in hub.repos:
                        return self.answer(409, {"error": "You already created this model repo", "url": hub.url(repo)})
                    hub.repos[repo] = payload
                    return self.answer(200, {"url": hub.url(repo), "name": repo})
                if parts == ["api", "validate-yaml"]:
                    return self.answer(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and parts[4:5] == ["preupload"]:
                    files = json.loads(body)["files"]
                    return self.answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                                       for f in files]})
                if parts[:2] == ["api", "models"] and parts[4:5] == ["commit"]:
                    repo = f"{parts[2]}/{parts[3]}"
                    if repo not in hub.repos:
                        return self.answer(404, {"error": "Repository not found"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line]
                    assert lines[0]["key"] == "header" and lines[0]["value"]["summary"]
                    for line in lines[1:]:
                        assert line["key"] == "file" and line["value"]["encoding"] == "base64", line["key"]
                        hub.files.setdefault(repo, {})[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    return self.answer(200, {"commitUrl": f"{hub.url(repo)}/commit/abc123", "commitOid": "abc123", "pullRequestUrl": None})
                return self.answer(404, {"error": f"no route {self.path}"})

            def answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, repo):
        return f"{self.endpoint}/{repo}"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    stand_in = StandInHub()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):

    return finished_run(tiny_llama, tmp_path_factory.mktemp("publish"), max_steps=4)[0]


def test_push_uploads_every_exported_file_with_its_card(run, hub, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--push-to-hub", "me/tiny", "--private", "--hub-endpoint", hub.endpoint]) == 0
    assert f"{hub.endpoint}/me/tiny/commit/abc123" in capsys.readouterr().out
    assert hub.repos["me/tiny"]["visibility"] == "private"
    exported = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"README.md", "config.json", "model.safetensors"} <= set(exported)
    assert hub.files["me/tiny"] == exported
    assert b"base_model:" in hub.files["me/tiny"]["README.md"]


def test_push_a_quantized_gguf_without_out_to_an_existing_repo(run, hub, capsys):
    hub.repos["me/tiny-gguf"] = {"name": "tiny-gguf", "organization": "me"}
    assert main(["export", str(run), "--gguf", "--dtype", "q8_0", "--push-to-hub", "me/tiny-gguf", "--hub-endpoint", hub.endpoint]) == 0
    assert sorted(hub.files["me/tiny-gguf"]) == ["README.md", "model-Q8_0.gguf"]
    assert hub.files["me/tiny-gguf"]["model-Q8_0.gguf"][:4] == b"GGUF"
    assert "pushed to me/tiny-gguf" in capsys.readouterr().out


def test_without_a_token_nothing_is_exported_and_one_line_says_so(run, hub, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--push-to-hub", "me/tiny", "--hub-endpoint", hub.endpoint]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Hugging Face token" in err and len(err.splitlines()) == 1
    assert not out.exists() and not hub.authorizations


def test_without_network_the_export_stays_and_one_line_says_so(run, hub, tmp_path, capsys):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--push-to-hub", "me/tiny", "--hub-endpoint", closed]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot reach the Hub" in err and str(out) in err and "hf upload me/tiny" in err
    assert (out / "model.safetensors").is_file()


def test_a_refused_token_is_named(run, hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--push-to-hub", "me/tiny", "--hub-endpoint", hub.endpoint]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the Hub refused the upload (401" in err and not hub.files


@pytest.fixture
def temporary_root(tmp_path, monkeypatch):
    """Where `tempfile` puts folders during the test, to see what an export leaves behind."""
    import tempfile

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.parametrize("repo_id", ["bad name/x", "owner/a..b"])
def test_an_invalid_repository_name_is_refused_in_one_line_before_exporting(repo_id, run, hub, tmp_path, temporary_root, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--push-to-hub", repo_id, "--hub-endpoint", hub.endpoint]) == 2
    assert main(["export", str(run), "--push-to-hub", repo_id, "--hub-endpoint", hub.endpoint]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: --push-to-hub {repo_id}: not a valid repository name") for line in err)
    assert not out.exists() and not list(temporary_root.iterdir()) and not hub.authorizations


def test_a_failed_push_without_out_leaves_no_temporary_folder(run, hub, temporary_root, capsys):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"
    assert main(["export", str(run), "--push-to-hub", "me/tiny", "--hub-endpoint", closed]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot reach the Hub" in err and "--out FOLDER" in err
    assert not list(temporary_root.iterdir())
