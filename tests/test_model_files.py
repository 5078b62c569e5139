"""A model folder or a run's final model as export, generate and recommend meet it: its own code never runs, damage
is named in one line, and an export is put in place whole."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tunesmith.cli import main

from helpers import one_error_line


def test_export_to_an_existing_file(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    assert main(["export", str(run), "--out", str(target)]) == 2
    one_error_line(capsys, str(target), "is a file")
    assert target.read_text() == "keep me"


def _with_own_code(model: Path, marker: Path) -> None:
    """`model`'s config names a module of its own (auto_map), which would write `marker` when imported."""
    (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                   "from transformers import GPT2Config\nclass Cfg(GPT2Config):\n    model_type = 'evilgpt'\n")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "evilgpt", "auto_map": {"AutoConfig": "evil.Cfg"}}))


def test_export_and_recommend_never_run_a_models_own_code_nor_ask(finished_run, tmp_path, capsys, monkeypatch):
    """transformers asks on stdin when trust_remote_code is not given; an answer of y would run the folder's code."""
    import io

    run, data, _ = finished_run
    copy, marker = tmp_path / "copy", tmp_path / "code-ran"
    shutil.copytree(run, copy)
    _with_own_code(copy / "final", marker)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\ny\n"))
    assert main(["export", str(copy), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "needs its own code")
    assert main(["recommend", "--data", str(data), "--candidate", str(copy / "final")]) == 2
    one_error_line(capsys, "--candidate", "its own code")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["cut_weights", "config_of_other_shapes", "config_field_of_another_type"])
def test_a_damaged_final_model_is_named_by_export_and_generate(damage, finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    final = copy / "final"
    config = json.loads((final / "config.json").read_text())
    if damage == "cut_weights":
        os.truncate(final / "model.safetensors", 1000)
    else:
        config["n_embd"] = 16 if damage == "config_of_other_shapes" else "big"
        (final / "config.json").write_text(json.dumps(config))
    for command in (["export", str(copy), "--out", str(tmp_path / "out")], ["generate", str(copy), "--prompt", "the lamp"]):
        assert main(command) == 2
        one_error_line(capsys, f"model {final}" if command[0] == "export" else f"model {copy}", "again")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_an_export_into_an_empty_folder_keeps_the_folder_and_clears_a_killed_exports_leftover(finished_run, tmp_path,
                                                                                                  monkeypatch):
    """An empty --out may be a mount point or the working folder: the export goes into it, the folder stays itself."""
    from tunesmith.rundir.durable import own_partial

    run, _, _ = finished_run
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o750)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / f"{own_partial(out / 'export').name.rpartition('-')[0]}-{gone.pid}").mkdir()  # a killed export's
    monkeypatch.chdir(out)
    assert main(["export", str(run), "--out", "."]) == 0
    assert (out / "config.json").is_file() and out.stat().st_mode & 0o777 == 0o750
    assert not [path for path in out.iterdir() if ".partial-" in path.name]


@pytest.mark.parametrize("damage", ["no_tokenizer_files", "no_tokenizer_json", "torn_tokenizer_json",
                                    "model_max_length_of_text"])
def test_a_model_folder_without_a_whole_tokenizer_is_named(damage, tiny_gpt2, tmp_path, capsys):
    """transformers makes a one-token tokenizer where the files are missing: every text would be empty."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_gpt2, copy)
    if damage == "no_tokenizer_files":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (copy / name).unlink()
    elif damage == "no_tokenizer_json":
        (copy / "tokenizer.json").unlink()
    elif damage == "torn_tokenizer_json":
        (copy / "tokenizer.json").write_text("{{{")
    else:
        config = json.loads((copy / "tokenizer_config.json").read_text())
        (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": "lots"}))
    assert main(["generate", str(copy), "--prompt", "the lamp"]) == 2
    expected = {"no_tokenizer_files": "its tokenizer holds 1 tokens", "no_tokenizer_json": "is tokenizer.json missing?",
                "torn_tokenizer_json": "JSON files",
                "model_max_length_of_text": "model_max_length in its tokenizer_config.json is 'lots'"}
    one_error_line(capsys, f"model {copy}", expected[damage])


def test_a_config_asking_for_more_layers_than_the_weights_hold_is_refused(tiny_gpt2, tmp_path, capsys):
    """transformers would start the missing blocks random and say so only in its log."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_gpt2, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "n_layer": config["n_layer"] + 2}))
    assert main(["generate", str(copy), "--prompt", "the lamp"]) == 2
    one_error_line(capsys, f"model {copy}", "lack 24 of the tensors", "transformer.h.")


def test_a_prompt_holding_a_token_beyond_the_embeddings_is_refused_and_others_generate(tiny_gpt2, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_gpt2, copy)
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    rows = json.loads((copy / "config.json").read_text())["vocab_size"]
    tokenizer["added_tokens"].append({"id": rows + 5, "content": "<|zap|>", "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(["generate", str(copy), "--prompt", "the lamp <|zap|>"]) == 2
    one_error_line(capsys, "the prompt holds token", f"beyond its {rows:,} embedding rows")
    assert main(["generate", str(copy), "--prompt", "the lamp", "--max-new-tokens", "2"]) == 0


def test_an_export_that_finds_its_out_taken_meanwhile_leaves_the_other_whole(finished_run, tmp_path, capsys, monkeypatch):
    """Two exports into one --out: the one that ends second is refused, and removes only what it wrote itself."""
    from tunesmith.export import hf

    run, _, _ = finished_run
    out = tmp_path / "out"
    save = hf._save_hf

    def racing(final, partial, *args):
        save(final, partial, *args)
        out.mkdir()
        (out / "model.safetensors").write_text("the other export's")

    monkeypatch.setattr(hf, "_save_hf", racing)
    assert main(["export", str(run), "--out", str(out)]) == 2
    one_error_line(capsys, f"--out {out}: something was written there while this export ran", "kept")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
