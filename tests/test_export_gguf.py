"""`tunesmith export --gguf`: Llama-family and GPT-2 runs, in full precision or quantized, as GGUF files that transformers' GGUF
loader reads back."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith import train
from tunesmith.cli import main
from tunesmith.export.gguf import rotary_permute
from tunesmith.models.embedded import gguf_config

from helpers import finished_run, make_corpus, run_config, train_tokenizer


TEXT = "the lamp glows when you press the button twice and the app shows a green light"


def loss_of(model, ids) -> float:
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.fixture(scope="module")
def llama_run(tiny_llama, tmp_path_factory):

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


@pytest.fixture(scope="module")
def gpt2_run(tiny_gpt2, tmp_path_factory):

    return finished_run(tiny_gpt2, tmp_path_factory.mktemp("gguf-gpt2"), max_steps=10)[0]


def greedy_ids(model, ids, new=12):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, pad_token_id=0)[0]


# relative loss tolerance per type, on the tiny models (whose 32-wide rows are single blocks)
QUANTIZED = [("q8_0", 0.01), ("q5_0", 0.05), ("q4_0", 0.10), ("fp16", 1e-3)]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype,tolerance", QUANTIZED)
def test_quantized_and_gpt2_gguf_round_trip(kind, dtype, tolerance, llama_run, gpt2_run, tmp_path):
    """Each new type, for both architectures, read back by transformers: the same tokens, and the loss and (at 8 bits and up)
    the greedy text of the run itself."""
    import gguf

    run = {"llama": llama_run, "gpt2": gpt2_run}[kind]
    out = tmp_path / "gguf"
    assert main(["export", str(run), "--out", str(out), "--dtype", dtype, "--gguf"]) == 0
    path = next(out.glob("*.gguf"))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    expected = dtype.upper().replace("FP", "F")
    assert any(kind_ == expected for kind_ in types.values()), types
    assert all(kind_ == "F32" for name, kind_ in types.items() if "norm" in name or name.endswith(".bias"))
    if dtype in ("q4_0", "q5_0"):
        assert types["token_embd.weight"] == {"q4_0": "Q5_0", "q5_0": "Q8_0"}[dtype]
    reference = AutoModelForCausalLM.from_pretrained(run / "final")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32, config=gguf_config(path))
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
    ids = AutoTokenizer.from_pretrained(run / "final")(TEXT, return_tensors="pt").input_ids
    assert torch.equal(tokenizer(TEXT, return_tensors="pt").input_ids, ids)
    assert abs(loss_of(model, ids) / loss_of(reference, ids) - 1) < tolerance
    if dtype in ("q8_0", "fp16"):
        assert torch.equal(greedy_ids(model, ids[:, :6]), greedy_ids(reference, ids[:, :6]))


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_qwen_runs_round_trip_unpermuted(kind, corpus_file, tmp_path):
    """Qwen2 (biased attention) and Qwen3 (query and key norms) keep transformers' rotary layout in llama.cpp too."""
    from transformers import Qwen2Config, Qwen3Config


    tokenizer = train_tokenizer("llama", make_corpus(200, seed=1))
    config = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind](
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim={"qwen2": 16, "qwen3": 128}[kind], max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / kind)
    tokenizer.save_pretrained(tmp_path / kind)
    train(run_config(tmp_path / kind, corpus_file, tmp_path / "run", max_steps=6))
    for dtype, tolerance in (("fp32", 1e-5), ("q8_0", 0.01)):
        out = tmp_path / dtype
        assert main(["export", str(tmp_path / "run"), "--out", str(out), "--dtype", dtype, "--gguf"]) == 0
        path = next(out.glob("*.gguf"))
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32, config=gguf_config(path))
        reference = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
        ids = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")(TEXT, return_tensors="pt").input_ids
        assert torch.equal(AutoTokenizer.from_pretrained(out, gguf_file=path.name)(TEXT, return_tensors="pt").input_ids, ids)
        assert abs(loss_of(model, ids) / loss_of(reference, ids) - 1) < tolerance


def test_quantized_files_get_smaller_in_order(llama_run, tmp_path):
    sizes = {}
    for dtype in ("fp16", "q8_0", "q5_0", "q4_0"):
        assert main(["export", str(llama_run), "--out", str(tmp_path / dtype), "--dtype", dtype, "--gguf"]) == 0
        sizes[dtype] = next((tmp_path / dtype).glob("*.gguf")).stat().st_size
    assert sizes["fp16"] > sizes["q8_0"] > sizes["q5_0"] > sizes["q4_0"]


def test_gguf_export_refuses_other_architectures_in_one_line(tmp_path, corpus_file, capsys):
    """GPT-Neo has no GGUF reader in transformers: the refusal names the supported ones."""
    from transformers import GPTNeoConfig, PreTrainedTokenizerFast


    tokenizer = train_tokenizer("gpt2", make_corpus(50))
    config = GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global"], 2]],
                          max_position_embeddings=128, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "neo")
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tokenizer.save_pretrained(tmp_path / "neo")
    train(run_config(tmp_path / "neo", corpus_file, tmp_path / "run", max_steps=2))  # GPT-Neo trains (with eager attention)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--gguf"]) == 2
    err = capsys.readouterr().err
    assert "GGUF export supports llama, mistral, qwen2, qwen3, gpt2" in err and "gpt_neo" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out2"), "--dtype", "q4_0"]) == 2
    assert "need --gguf" in capsys.readouterr().err


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
    results = []
    for model in (embedded_run.run / "final", gguf):  # one at a time: --compare would also time generation, which is not at stake
        args = ["eval", str(model), "--data", str(articles), "--block-size", "128", "--set", "train.precision=fp32",
                "--set", "train.eval_batch_size=8", "--json"]
        assert main(args) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["tokens"] == results[1]["tokens"] > 1000  # the GGUF's tokenizer cuts the text the same way
    assert abs(results[1]["perplexity"] / results[0]["perplexity"] - 1) < 0.01


def test_eval_generate_and_serve_take_a_quantized_file(llama_run, corpus_file, tmp_path, capsys):
    from tunesmith.serve import load_for_serving

    assert main(["export", str(llama_run), "--out", str(tmp_path / "q4"), "--dtype", "q4_0", "--gguf"]) == 0
    path = tmp_path / "q4" / "model-Q4_0.gguf"
    capsys.readouterr()
    assert main(["eval", str(path), "--data", str(corpus_file), "--block-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 0
    assert main(["generate", str(path), "--prompt", "the lamp", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    served = load_for_serving(str(path), "cpu")
    assert served.name == path.name and served.encode_completion("the lamp")


def test_a_qwen3_whose_heads_transformers_would_misread_is_refused():
    from transformers import Qwen3Config

    from tunesmith.errors import UserError
    from tunesmith.export.gguf import LAYOUTS

    LAYOUTS["qwen3"].check(Qwen3Config(hidden_size=32, num_attention_heads=2, head_dim=128))
    with pytest.raises(UserError, match="assumes 128"):
        LAYOUTS["qwen3"].check(Qwen3Config(hidden_size=32, num_attention_heads=2, head_dim=16))
