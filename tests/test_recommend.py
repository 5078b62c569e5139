"""`tunesmith recommend`: memory estimates against measured peaks, and the plan and config it writes."""

import json

import pytest
from transformers import AutoConfig

from tunesmith.api import prepare
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.planning.measure import peak_tensor_bytes
from tunesmith.planning.memory import StepShape, fit_memory, trained_layers
from tunesmith.planning.recommend import parse_size
from tunesmith.training import train_run
from tunesmith.runtime import pick_device, pick_precision

from helpers import make_corpus


def measured_and_estimated(model: str, config, method: str, data, out, micro_batch: int, block_size: int,
                           labels: int = 0) -> tuple[int, int]:
    overrides = [("task", "classify" if labels else "lm"), ("model.name", model), ("model.method", method),
                 ("data.train", [str(data)]), ("data.block_size", block_size),
                 ("train.micro_batch_size", micro_batch), ("train.max_steps", 2), ("train.eval_every", 2),
                 ("monitor.sample_count", 0), ("monitor.tensorboard", False), ("output.dir", str(out))]
    if method == "freeze":
        overrides.append(("model.train_last_layers", trained_layers(config, "freeze")))
    cfg = load_config(None, overrides)
    prepare(cfg)  # tokenizing happens outside the measured run
    device = pick_device("auto")
    _, measured = peak_tensor_bytes(lambda: train_run(cfg), device)
    shape = StepShape(method, block_size, pick_precision("auto", device), classifier_labels=labels)
    return measured, fit_memory(config, shape).estimate(micro_batch).total


def test_the_cpu_peak_ignores_frees_of_blocks_from_an_earlier_window():
    """Once the profiler has run, the allocator knows the size of the blocks it saw; the garbage collector may free
    one of them in a later window, which must not lower that window's peak."""
    import torch

    cpu = torch.device("cpu")
    kept = {}
    peak_tensor_bytes(lambda: kept.update(t=torch.ones(250_000)), cpu)

    def free_then_allocate():
        kept.clear()
        return torch.ones(125_000)

    _, peak = peak_tensor_bytes(free_then_allocate, cpu)
    assert peak == 125_000 * 4


@pytest.mark.parametrize("kind,method", [("gpt2", "full"), ("gpt2", "lora"), ("gpt2", "freeze"), ("llama", "full"), ("llama", "lora")])
def test_estimate_is_within_25_percent_of_the_measured_peak_for_tiny_models(kind, method, tiny_models, corpus_file, tmp_path):
    path = tiny_models[kind]
    measured, estimated = measured_and_estimated(str(path), AutoConfig.from_pretrained(path), method, corpus_file, tmp_path / "run",
                                                 micro_batch=4, block_size=64)
    assert abs(estimated / measured - 1) <= 0.25, f"estimated {estimated:,} bytes, measured {measured:,}"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_estimate_is_within_25_percent_for_a_classifier_with_a_head(method, tiny_llama, tmp_path):
    """Texts longer than the block, so that every example is cut to it: the estimate is for examples of block size."""
    filler = " ".join(make_corpus(1, words_per_doc=80))
    rows = [f"{'good bright lamp' if i % 2 else 'bad broken hub'} {i} {filler},{'pos' if i % 2 else 'neg'}" for i in range(120)]
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    measured, estimated = measured_and_estimated(str(tiny_llama), AutoConfig.from_pretrained(tiny_llama), method, data,
                                                 tmp_path / "run", micro_batch=4, block_size=32, labels=2)
    assert abs(estimated / measured - 1) <= 0.25, f"estimated {estimated:,} bytes, measured {measured:,}"


def test_estimate_is_within_25_percent_of_the_measured_peak_for_the_embedded_default(embedded_run):
    from tunesmith.planning.candidates import candidate

    shape = candidate("smollm2-135m").config  # the built-in table, not the converted model's config
    precision = pick_precision("auto", pick_device("auto"))
    estimate = fit_memory(shape, StepShape("full", embedded_run.block_size, precision)).estimate(embedded_run.micro_batch)
    measured = embedded_run.peak
    assert measured > 1.5 * 2**30  # weights, gradients and AdamW state of 135M parameters in fp32 at least
    assert estimate.weights == 134_515_008 * 4 and estimate.optimizer == 2 * estimate.weights
    assert abs(estimate.total / measured - 1) <= 0.25, f"estimated {estimate.total:,} bytes, measured {measured:,}"


def test_recommend_writes_a_config_that_trains(tiny_gpt2, corpus_file, tmp_path, capsys):
    written = tmp_path / "recommended.yaml"
    args = ["recommend", "--data", str(corpus_file), "--only", "--candidate", str(tiny_gpt2), "--memory", "8GB",
            "--block-size", "32", "--write", str(written)]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [o["method"] for o in plan["options"]] == ["full", "lora", "freeze"]
    assert all(o["micro_batch"] == 4 and o["memory"]["total"] > o["memory"]["weights"] > 0 for o in plan["options"])
    recommended = plan["recommended"]
    assert recommended["model"] == str(tiny_gpt2) and recommended["method"] == "full"
    cfg = load_config(written)
    assert (cfg.model.name, cfg.model.method, cfg.data.block_size) == (str(tiny_gpt2), "full", 32)
    assert cfg.train.micro_batch_size * cfg.train.grad_accum >= 1 and 3 <= cfg.train.epochs <= 10

    assert main(args) == 2 and "exists" in capsys.readouterr().err  # never overwritten silently
    assert main(args + ["--force"]) == 0
    table = capsys.readouterr().out
    assert "recommended:" in table and "tok/s" in table and "h/epoch" in table

    assert main(["train", str(written), "--max-steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_recommend_falls_back_to_a_method_that_fits(corpus_file, tmp_path, capsys):
    """The embedded model's shape from the built-in table: full fine-tuning does not fit in 2 GB, LoRA does."""
    args = ["recommend", "--data", str(corpus_file), "--only", "--candidate", "smollm2-135m", "--block-size", "128",
            "--write", str(tmp_path / "r.yaml"), "--memory", "2GB", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    full = next(o for o in plan["options"] if o["method"] == "full")
    assert full["micro_batch"] == 0 and full["memory"]["total"] > 0.9 * 2 * 2**30
    assert full["params"] == 134_515_008  # SmolLM2-135M, embeddings tied
    assert plan["recommended"]["method"] != "full"
    assert any("full fine-tuning needs" in reason for reason in plan["recommended"]["reasons"])


def test_recommend_cuts_epochs_to_the_hours_and_says_when_nothing_fits(tiny_gpt2, corpus_file, tmp_path, capsys):
    args = ["recommend", "--data", str(corpus_file), "--only", "--candidate", str(tiny_gpt2), "--block-size", "32",
            "--write", str(tmp_path / "r.yaml"), "--force", "--json"]
    assert main(args + ["--memory", "8GB", "--hours", "0.0000001"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recommended"]["epochs"] < 1 and "does" in plan["recommended"]["reasons"][0]

    assert main(args + ["--memory", "100KB"]) == 2
    assert "no candidate fits" in capsys.readouterr().err


def test_recommend_shows_but_never_chooses_a_model_it_cannot_load(corpus_file, tmp_path, capsys):
    """Offline (the tests set HF_HUB_OFFLINE), GPT-2 is estimated from the built-in table but would need a download."""
    args = ["recommend", "--data", str(corpus_file), "--only", "--candidate", "gpt2", "--write", str(tmp_path / "r.yaml")]
    assert main(args) == 2
    assert "no candidate can be used here (needs a download" in capsys.readouterr().err
    assert not (tmp_path / "r.yaml").exists()


def test_memory_sizes_parse():
    assert parse_size("24GB") == parse_size("24 GiB") == parse_size("24g") == 24 * 2**30
    assert parse_size("512MB") == 512 * 2**20
    for text in ("lots", "nanGB", "infGB", "1e400GB", "1e-30GB", "0GB"):
        with pytest.raises(UserError, match="give a size"):
            parse_size(text)


def test_qlora_is_lora_with_a_4_bit_base():
    """QLoRA cannot run here (bitsandbytes needs CUDA): its figure is LoRA's, with the blocks' matrices in NF4."""
    from tunesmith.planning.candidates import candidate
    from tunesmith.planning.memory import NF4_BYTES, as_qlora

    shape = candidate("smollm2-135m").config
    lora = fit_memory(shape, StepShape("lora", 128, "bf16"))
    qlora = as_qlora(lora)
    # per block: q and o 576x576, k and v 192x576, gate, up and down 576x1536
    assert lora.matrices == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)
    assert qlora.weights == int(lora.matrices * NF4_BYTES + (lora.params - lora.matrices) * 2)
    assert qlora.trainable == lora.trainable and qlora.per_sequence == lora.per_sequence
    saved = lora.estimate(1).total - qlora.estimate(1).total
    assert saved == pytest.approx(lora.weights - qlora.weights, rel=1e-6)


# TinyLlama-1.1B's shape with SmolLM2's vocabulary (benchmarks/bench_memory.py --large), and the peak RSS of
# `tunesmith train` on it: fp32 on a CPU, 2 steps of 4 x 128 tokens (benchmarks/RESULTS.md, 2026-12-04)
LARGE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
             vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=False)
LARGE_PEAK_RSS = {"lora": 7.99 * 2**30, "freeze": 8.79 * 2**30}


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_cpu_plan_of_a_1b_model_is_within_10_percent_of_the_measured_peak_rss(method):
    """The calibration of `as_resident`: a 1.17B Llama from its config alone (simulated on fake tensors, no weights)."""
    from transformers import LlamaConfig

    from tunesmith.planning.memory import as_resident

    memory = fit_memory(LlamaConfig(**LARGE), StepShape(method, 128, "fp32"))
    assert memory.params - (memory.trainable if method == "lora" else 0) == 1_170_302_976
    planned = as_resident(memory).estimate(4)
    measured = LARGE_PEAK_RSS[method]
    assert abs(planned.total / measured - 1) <= 0.10, f"planned {planned.total / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB"
    assert planned.total - planned.process == memory.estimate(4).total  # the tensors as before, the process besides them
    if method == "lora":  # the tensors alone, what recommend planned before (6.28 GiB), are 21% short
        assert memory.estimate(4).total / measured - 1 < -0.2


def _cpu_run(model, data, out, micro_batch: int = 4, block_size: int = 32):
    return load_config(None, [("model.name", str(model)), ("data.train", [str(data)]), ("data.block_size", block_size),
                              ("train.micro_batch_size", micro_batch), ("train.max_steps", 1), ("train.device", "cpu"),
                              ("output.dir", str(out))])


def test_a_cpu_run_that_does_not_fit_is_refused_in_one_line_with_what_fits(tiny_llama, corpus_file, tmp_path, monkeypatch, capsys):
    from tunesmith.planning import preflight
    from tunesmith.planning.memory import as_resident

    precision = pick_precision("auto", pick_device("cpu"))
    memory = as_resident(fit_memory(AutoConfig.from_pretrained(tiny_llama), StepShape("full", 32, precision)))
    assert memory.estimate(1).total < memory.estimate(2).total
    monkeypatch.setattr(preflight, "available_memory", lambda: (memory.estimate(1).total + memory.estimate(2).total) // 2)
    args = ["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--block-size", "32", "--batch-size", "4",
            "--max-steps", "1", "--out", str(tmp_path / "run"), "--set", "train.device=cpu"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "this run needs about" in lines[0] and "is available" in lines[0]
    assert "what fits: train.micro_batch_size=1 with train.grad_accum=4" in lines[0] and "--set train.memory_check=false" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run began

    monkeypatch.setattr(preflight, "available_memory", lambda: memory.estimate(1).total // 2)  # not even micro-batch 1: a cheaper method
    with pytest.raises(UserError, match="what fits: model.method=lora at micro-batch|what fits: model.method=freeze|smaller model"):
        preflight.check_memory_fits(_cpu_run(tiny_llama, corpus_file, tmp_path / "run"))
    started_anyway = _cpu_run(tiny_llama, corpus_file, tmp_path / "run")
    started_anyway.train.memory_check = False
    preflight.check_memory_fits(started_anyway)


def test_a_cpu_run_that_fits_passes_the_memory_check_and_the_check_can_be_turned_off(tiny_llama, corpus_file, tmp_path, monkeypatch):
    from tunesmith.planning import preflight

    cfg = _cpu_run(tiny_llama, corpus_file, tmp_path / "run")
    simulated = []
    monkeypatch.setattr(preflight, "fit_memory", lambda *args: simulated.append(args))
    monkeypatch.setattr(preflight, "available_memory", lambda: 3 * 2**30)
    preflight.check_memory_fits(cfg)
    assert not simulated  # a tiny model's bound fits: no simulation at all
    monkeypatch.setattr(preflight, "available_memory", lambda: 2**20)
    cfg.train.memory_check = False
    preflight.check_memory_fits(cfg)


def test_a_grpo_run_is_checked_for_its_whole_group_and_a_frozen_reference(tiny_llama, corpus_file, tmp_path, monkeypatch):
    """Each prompt puts grpo.group_size completions in a batch, and without LoRA a KL reference is a copy of the model."""
    from tunesmith.models import count_parameters
    from tunesmith.planning import preflight

    seen, check = {}, preflight.check_plan_fits
    monkeypatch.setattr(preflight, "peak_bound", lambda config, shape, rows: seen.update(rows=rows) or 0)
    monkeypatch.setattr(preflight, "check_plan_fits", lambda cfg, config, log, held: seen.update(held=held) or check(cfg, config, log, held))
    weights = count_parameters(AutoConfig.from_pretrained(tiny_llama)) * 4
    for method, beta, held in (("full", 0.04, weights), ("lora", 0.04, 0), ("full", 0.0, 0)):
        cfg = load_config(None, [("task", "grpo"), ("model.name", str(tiny_llama)), ("model.method", method), ("data.train", [str(corpus_file)]),
                                 ("data.block_size", 64), ("grpo.max_new_tokens", 8), ("grpo.group_size", 16), ("grpo.beta", beta),
                                 ("grpo.rewards", [{"length": 4}]), ("train.micro_batch_size", 2), ("train.device", "cpu")])
        preflight.check_memory_fits(cfg)
        assert seen == {"rows": 32, "held": held}, method


def test_a_grpo_group_too_large_names_a_group_that_fits_and_a_reference_past_the_memory_names_lora(tiny_llama, corpus_file, monkeypatch):
    from tunesmith.planning import preflight

    def grpo(method, beta):
        return load_config(None, [("task", "grpo"), ("model.name", str(tiny_llama)), ("model.method", method), ("data.train", [str(corpus_file)]),
                                  ("data.block_size", 64), ("grpo.max_new_tokens", 8), ("grpo.group_size", 16), ("grpo.beta", beta),
                                  ("grpo.rewards", [{"length": 4}]), ("train.micro_batch_size", 1), ("train.device", "cpu")])
    fitted, resident = [], preflight.as_resident
    monkeypatch.setattr(preflight, "as_resident", lambda memory: fitted.append(resident(memory)) or fitted[-1])
    monkeypatch.setattr(preflight, "available_memory", lambda: 1)
    with pytest.raises(UserError):
        preflight.check_memory_fits(grpo("lora", 0.04))
    memory = fitted[0]
    monkeypatch.setattr(preflight, "available_memory", lambda: (memory.estimate(4).total + memory.estimate(8).total) // 2)
    with pytest.raises(UserError, match=r"micro-batch 1 x 16 rows of 64 tokens.* what fits: grpo.group_size=4 at micro-batch 1"):
        preflight.check_memory_fits(grpo("lora", 0.04))
    monkeypatch.setattr(preflight, "available_memory", lambda: 1000)  # less than the frozen copy of a full run's weights
    with pytest.raises(UserError, match=r"0.00 GiB is available beside the .* GiB of weights held with it .* what fits: model.method=lora"):
        preflight.check_memory_fits(grpo("full", 0.04))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_demo_passes_the_memory_check_with_6_gib_available(precision, corpus_file, monkeypatch):
    """The embedded default as the demo trains it (full, 4 x 256), on a machine with 6 GiB free: its process peaks at
    about 4 GiB (benchmarks/RESULTS.md), so the check must let it start."""
    from tunesmith.planning import preflight
    from tunesmith.planning.candidates import candidate

    monkeypatch.setattr(preflight, "available_memory", lambda: 6 * 2**30)
    cfg = load_config(None, [("data.train", [str(corpus_file)]), ("data.block_size", 256), ("train.micro_batch_size", 4),
                             ("train.device", "cpu"), ("train.precision", precision)])
    preflight.check_plan_fits(cfg, candidate("smollm2-135m").config)
    monkeypatch.setattr(preflight, "available_memory", lambda: 3 * 2**30)  # the check is live: the same run with less
    with pytest.raises(UserError, match=r"needs about [3-5]\.\d\d GiB .* and 3\.00 GiB is available"):
        preflight.check_plan_fits(cfg, candidate("smollm2-135m").config)


def test_an_architecture_with_derived_layer_types_and_no_sdpa_is_simulated():
    """Mamba's config computes its layer types from the layer count and its model has no SDPA attention."""
    from transformers import MambaConfig

    from tunesmith.planning.memory import _build, _with_layers

    config = _with_layers(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=4, state_size=4), 2)
    assert config.num_hidden_layers == 2 and len(config.layer_types) == 2
    assert sum(p.numel() for p in _build(config, StepShape("full", 32, "fp32")).parameters()) > 0


def test_a_fit_is_simulated_once_per_shape_and_again_for_another(monkeypatch):
    from transformers import LlamaConfig

    from tunesmith.planning import memory

    simulated = []
    real = memory.simulate_peak
    monkeypatch.setattr(memory, "simulate_peak", lambda *args: simulated.append(args) or real(*args))
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64)
    first = fit_memory(config, StepShape("full", 16, "fp32"))
    count = len(simulated)
    assert count and fit_memory(config, StepShape("full", 16, "fp32")) is first and len(simulated) == count
    config.intermediate_size = 48  # the same object changed: another shape
    assert fit_memory(config, StepShape("full", 16, "fp32")).params > first.params and len(simulated) == 2 * count
    fit_memory(config, StepShape("full", 32, "fp32"))
    assert len(simulated) == 3 * count
