"""Every command of the README and of docs/, run through the CLI in-process on tiny models."""

import json

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.errors import UserError

from helpers import run_config


@pytest.fixture
def run_args(tiny_gpt2, corpus_file, tmp_path):
    return ["--model", str(tiny_gpt2), "--data", str(corpus_file), "--block-size", "32", "--lr", "3e-3", "--out", str(tmp_path / "run")]


def test_prepare_twice_uses_the_cache(run_args, capsys):
    assert main(["prepare", *run_args]) == 0
    first = capsys.readouterr().out
    assert "documents: 120 read" in first and "leakage check" in first and "cached" not in first
    assert main(["prepare", *run_args]) == 0
    assert "cached:" in capsys.readouterr().out


def test_train_eval_generate(run_args, tmp_path, tiny_gpt2, corpus_file, capsys):
    assert main(["train", *run_args, "--max-steps", "20", "--set", "train.eval_every=10"]) == 0
    out = capsys.readouterr().out
    assert "base model: validation loss" in out and "validation perplexity" in out
    assert out.index(f"run directory: {tmp_path / 'run'}") < out.index("base model: validation loss")  # named before it measures
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "final" / "config.json").is_file()

    assert main(["eval", str(run), "--data", str(corpus_file), "--block-size", "32", "--compare", str(tiny_gpt2), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    tuned, base = payload["results"]
    assert tuned["perplexity"] < base["perplexity"] and tuned["tokens"] == base["tokens"] > 0

    assert main(["generate", str(run), "--prompt", "reset the hub", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    greedy = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "reset the hub", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == greedy and greedy.strip()
    sampled = []
    for _ in range(2):
        assert main(["generate", str(run), "--prompt", "reset", "--temperature", "1.0", "--seed", "3", "--max-new-tokens", "8"]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1]


def test_resume_a_finished_run_from_its_saved_config(run_args, tmp_path, capsys):
    assert main(["train", *run_args, "--max-steps", "4"]) == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    (tmp_path / "run" / "config.yaml").write_text("")  # emptied: resuming would run on defaults the run never had
    assert main(["train", *run_args, "--max-steps", "6", "--resume"]) == 2
    assert "config.yaml are damaged (empty)" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text("model: [unclosed\n")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "the run's saved settings" in capsys.readouterr().err
    for damaged in ("train:\n  lr: 0.001\n", "model:\n  name: '  '\n"):  # every run saves the model it trains
        (tmp_path / "run" / "config.yaml").write_text(damaged)
        assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
        assert "config.yaml are damaged (no model.name)" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text(f"model:\n  name: {run_args[1]}\ntrain:\n  lr: abc\n")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the run's saved settings" in err and "hold what this tunesmith does not take: train.lr:" in err
    assert "correct it in that file" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "run" / "config.yaml").unlink()
    (tmp_path / "run" / "config.yaml").mkdir()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "are damaged (not a regular file)" in capsys.readouterr().err


def test_eval_compare_of_models_with_other_tokenizers_compares_the_whole_text_s_loss():
    from tunesmith.evaluation.scoring import EvalResult
    from tunesmith.tasks import task_view

    first, same = (EvalResult("a", 2.0, 7.389, 1000, 32, 0.4, tokenizer="t1"), EvalResult("b", 1.9, 6.686, 1000, 32, 0.4, tokenizer="t1"))
    assert task_view("lm").eval_change(first, same) == "perplexity change from a to b: -9.5%"
    other = EvalResult("c", 1.9, 6.686, 1200, 32, 0.4, tokenizer="t2")  # 1,200 tokens of the same text: 2,280 nats against 2,000
    assert task_view("lm").eval_change(first, other) == (
        "a and c have different tokenizers (1,000 and 1,200 tokens scored), so their perplexities do not compare; their loss "
        "summed over the text each scored is the nearer measure: 2,000 and 2,280 nats (+14.0%)")


def test_eval_compare_of_two_tasks_is_refused_before_either_model_loads(tmp_path, capsys):
    from tunesmith.cli.commands import _check_compared_tasks

    for name, task in (("lm", "lm"), ("cls", "classify")):  # no weights: nothing may load
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "tunesmith_task.json").write_text(json.dumps({"task": task}))
    assert main(["eval", str(tmp_path / "lm"), "--data", "x.jsonl", "--compare", str(tmp_path / "cls")]) == 2
    assert "does task lm and" in capsys.readouterr().err
    _check_compared_tasks("a", "b", ["lm", "chat"])  # a language model is measured as the chat model is
    _check_compared_tasks("a", "b", [None, "classify"])  # a base model, as the classifier is
    with pytest.raises(UserError, match="does task chat and b task preference"):
        _check_compared_tasks("a", "b", ["chat", "preference"])


def test_chat_commands_act_the_same_typed_or_piped():
    from types import SimpleNamespace

    from tunesmith.cli.use import _chat_command

    resets = []
    session = SimpleNamespace(system=None, reset=lambda: resets.append(1))
    assert _chat_command(session, "/system be brief") == "(system prompt set; history cleared)" and session.system == "be brief"
    assert _chat_command(session, "/reset") == "(history cleared)" and len(resets) == 2
    assert _chat_command(session, "/system") == "(system prompt cleared; history cleared)" and session.system is None
    assert _chat_command(session, "/systematic doubt") is None and _chat_command(session, "hello") is None


def test_piped_chat_answers_each_message_on_its_own_line_and_fails_when_one_got_no_reply(capsys, monkeypatch):
    import io
    from types import SimpleNamespace

    from tunesmith.cli.use import _chat_piped

    def reply(text):
        if len(text) > 10:
            raise UserError("the prompt is past the model's context")
        return f"re: {text}\nmore\r\u2028end"

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"first\n" + b"long " * 20 + b"\nthird\n"), encoding="utf-8"))
    assert _chat_piped(SimpleNamespace(system=None, reply=reply)) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == ["re: first more  end", "", "re: third more  end"]
    assert "past the model's context" in err and "1 message got no reply" in err


def test_generate_chat_needs_a_template(run_args, tiny_gpt2, capsys):
    assert main(["generate", str(tiny_gpt2), "--prompt", "hi", "--chat"]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_text_typed_or_piped_with_bytes_that_are_not_utf8_is_read_with_them_replaced(tiny_gpt2, capsys, monkeypatch):
    import io

    from tunesmith.config.run import typed_text
    from tunesmith.cli.use import _piped_lines

    typed = "the \udcff lamp"  # how Python hands over the byte 0xff from a command line
    assert typed_text(typed) == "the \ufffd lamp" and typed_text("\ud800 plain") == "? plain" and typed_text("ok") == "ok"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"the \xff lamp\nnext\n"), encoding="ascii"))
    assert list(_piped_lines()) == ["the \ufffd lamp\n", "next\n"]  # UTF-8 whatever the locale's encoding
    assert main(["generate", str(tiny_gpt2), "--prompt", typed, "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    for args in (["--set", "data.template={a} \udcff {b}"], ["--out", "run-\udcff"], ["--data", "caf\udce9.jsonl"]):
        assert main(["train", "--model", str(tiny_gpt2), "--data", "x.jsonl", *args]) == 2  # no file, tokenizer or log takes them
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds bytes that are not UTF-8" in err[0] and "\ufffd" in err[0], err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "missing.jsonl"], "no file matches"),
        (["train", "--model", "no/such/dir/model", "--data", "x"], "no such directory"),
        (["prepare", "--model", "gpt2-unknown-model-id", "--data", "x"], "the Hugging Face hub cannot be reached"),
        (["train", "--block-size", "4096"], "above the model's context of 128"),
        (["train", "--block-size", "100000000"], "above the model's context of 128"),  # before any memory it would need
        (["train", "--resume"], "--resume needs --out"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message, tiny_gpt2, corpus_file, capsys):
    full = list(args)
    if "--model" not in full:
        full += ["--model", str(tiny_gpt2)]
    if "--data" not in full:
        full += ["--data", str(corpus_file)]
    if "--block-size" not in full:
        full += ["--block-size", "32"]
    assert main(full) == 2
    printed = capsys.readouterr()
    err = printed.err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("error: ")
    assert "--resume" not in printed.out  # a run that failed before training is not offered a resume


def test_a_folder_for_an_input_a_missing_run_and_a_negative_budget_are_named(tiny_gpt2, corpus_file, tmp_path, capsys):
    for args, message in [(["generate", str(tiny_gpt2), "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl")],
                           "a folder; name a file"),
                          (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "no such run directory"),
                          (["recommend", "--data", str(corpus_file), "--hours", "-1", "--write", str(tmp_path / "r.yaml")],
                           "--hours -1: the time budget must be a positive number")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r.yaml").exists()


def test_quickstart_runs_end_to_end_on_a_small_model(tiny_llama, tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--model", str(tiny_llama), "--out", str(out), "--block-size", "64", "--max-steps", "6", "--lr", "3e-3",
                 "--set", "train.eval_every=3"]) == 0
    printed = capsys.readouterr().out
    assert "validation perplexity: base" in printed and "before:" in printed and "after:" in printed
    assert "general language kept: " in printed and "of its fit retained" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val_ppl"] < summary["base_val_ppl"]


def test_doctor_shows_the_environment(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {check["name"]: check for check in report["checks"]}
    assert {"Python", "torch", "transformers", "peft", "CPU", "RAM", "cache", "Hugging Face hub", "embedded model"} <= set(checks)
    assert checks["torch"]["ok"] and "GiB" in checks["RAM"]["value"] and "GiB free" in checks["cache"]["value"]
    assert "not converted yet" in checks["embedded model"]["value"]  # each test has its own empty cache
    assert main(["doctor"]) == 0 and "embedded model" in capsys.readouterr().out


def _stop():
    raise KeyboardInterrupt


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_export_writes_a_plain_transformers_directory_with_a_model_card(dtype, tiny_gpt2, corpus_file, tmp_path, capsys, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith import train


    train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=4))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--dtype", dtype]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert exported.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    ids = torch.arange(10)[None]
    assert torch.allclose(exported(ids).logits.float(), final(ids).logits, atol=0.1 if dtype == "bf16" else 1e-6)
    card = (tmp_path / "export" / "README.md").read_text()
    for part in ("base_model:", "## Data", "## Results", "validation perplexity", "## Training config", "## Intended use and limits"):
        assert part in card
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 2  # not empty: refused
    if dtype == "fp32":  # a damaged saved config or summary leaves their parts of the card empty, not the export undone
        (tmp_path / "run" / "config.yaml").write_bytes(b"train: [lr: \xff")
        (tmp_path / "run" / "summary.json").write_text("{torn")
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
        card = (tmp_path / "again" / "README.md").read_text()
        assert "no readable summary.json in the run" in card and "config.yaml is missing or could not be read" in card
        (tmp_path / "run" / "config.yaml").write_text(f"model:\n  name: {tiny_gpt2}\ntrain:\n  lr: abc\n")
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "edited")]) == 0
        card = (tmp_path / "edited" / "README.md").read_text()
        assert "lr: abc" in card and "- warning: this tunesmith does not take the run's config.yaml as it is (train.lr:" in card
        (tmp_path / "run" / "config.yaml").write_text("model:\n  name: \"x\\nbase_model: evil\\n---\"\n")
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "named")]) == 0
        front = (tmp_path / "named" / "README.md").read_text().split("\n---\n")[0]
        assert yaml.safe_load(front.removeprefix("---\n"))["base_model"] == "x\nbase_model: evil\n---"
        (tmp_path / "run" / "data_report.json").write_text('{"documents_read": "abc"}')  # the wrong kind: refused, nothing left
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "third")]) == 2
        assert not (tmp_path / "third").exists()
        (tmp_path / "run" / "data_report.json").unlink()
        (tmp_path / "empty").mkdir()
        for out in (tmp_path / "fourth", tmp_path / "empty"):  # stopped midway: what it wrote goes, a folder found empty stays
            with monkeypatch.context() as patched:
                patched.setattr("tunesmith.export.hf._save_hf", lambda _final, out, *_: (out / "part").write_text("") or _stop())
                assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 130
        assert not (tmp_path / "fourth").exists() and list((tmp_path / "empty").iterdir()) == []
