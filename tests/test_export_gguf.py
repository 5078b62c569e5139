"""`tunesmith export --gguf`: Llama-family runs as GGUF files that transformers' GGUF loader reads back unchanged."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith import train
from tunesmith.cli import main
from tunesmith.export_gguf import rotary_permute

from test_train import run_config

TEXT = "the lamp glows when you press the button twice and the app shows a green light"


def loss_of(model, ids) -> float:
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.fixture(scope="module")
def llama_run(tiny_llama, tmp_path_factory):
    from conftest import finished_run

    return finished_run(tiny_llama, tmp_path_factory.mktemp("gguf"), max_steps=10)[0]


@pytest.mark.parametrize("dtype,tolerance", [("fp32", 1e-6), ("fp16", 1e-3), ("bf16", 1e-2)])
def test_gguf_round_trip_keeps_tokens_and_loss(dtype, tolerance, llama_run, tmp_path, capsys):
    out = tmp_path / "gguf"
    assert main(["export", str(llama_run), "--out", str(out), "--dtype", dtype, "--gguf"]) == 0
    files = list(out.glob("*.gguf"))
    assert len(files) == 1 and str(files[0]) in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f'gguf_file="{files[0].name}"' in card and "## Intended use and limits" in card

    reference_tokenizer = AutoTokenizer.from_pretrained(llama_run / "final")
    reference = AutoModelForCausalLM.from_pretrained(llama_run / "final")
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=files[0].name)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=files[0].name, dtype=torch.float32)
    ids = reference_tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(tokenizer(TEXT, return_tensors="pt").input_ids, ids)
    assert tokenizer.eos_token == reference_tokenizer.eos_token
    assert abs(loss_of(model, ids) / loss_of(reference, ids) - 1) < tolerance


def test_rotary_permutation_is_llama_cpps_interleaving():
    """Rows [a0 a1 | b0 b1] of a head (halves rotated together in transformers) become [a0 b0 a1 b1] (pairs in llama.cpp)."""
    weight = torch.arange(8.0)[:, None]  # two heads of four rows
    assert rotary_permute(weight, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_export_refuses_other_architectures_in_one_line(tiny_gpt2, corpus_file, tmp_path, capsys):
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=2))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--gguf"]) == 2
    assert "GGUF export supports Llama-family models" in capsys.readouterr().err


def test_the_fine_tuned_embedded_default_round_trips_through_gguf_within_1_percent(embedded_run, tmp_path, capsys, monkeypatch):
    """Exported in fp16, read back by transformers' GGUF loader (its own tokenizer too): the same perplexity on the data.

    fp16 rather than bf16: a short fine-tuning moves weights by about the learning rate, which is bf16's spacing
    at their size, so a bf16 copy can lose part of what was learned (benchmarks/RESULTS.md has both figures)."""
    out = tmp_path / "gguf"
    assert main(["export", str(embedded_run.run), "--out", str(out), "--dtype", "fp16", "--gguf"]) == 0
    gguf = next(out.glob("*.gguf"))
    capsys.readouterr()
    articles = tmp_path / "articles.jsonl"
    articles.write_text("".join(embedded_run.corpus.read_text().splitlines(keepends=True)[:40]))
    args = ["eval", str(embedded_run.run / "final"), "--compare", str(gguf), "--data", str(articles),
            "--block-size", "128", "--set", "train.precision=fp32", "--set", "train.eval_batch_size=8", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["tokens"] == results[1]["tokens"] > 1000  # the GGUF's tokenizer cuts the text the same way
    assert abs(results[1]["perplexity"] / results[0]["perplexity"] - 1) < 0.01
