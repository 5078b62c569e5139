import json
import math
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from tunesmith import load_config, train
from tunesmith.cli import main
from tunesmith.config import CleanConfig, DataConfig, MonitorConfig
from tunesmith.data import prepare_data
from tunesmith.diagnose.rules import FORGETTING_NATS, RunFacts, diagnose, diagnose_run
from tunesmith.errors import ConfigError, UserError
from tunesmith.evaluation.forgetting import REPLAY_KEYS, BaseSampler, build_probe, rehearsal_file, split_general_file
from tunesmith.models import resolve_model
from tunesmith.report.writer import write_report
from tunesmith.tasks import TASK_FILE

from helpers import chat_config, classify_config, conversations, cut_run, labelled, make_corpus, run_config, write_format, write_jsonl



def metric_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_probe_numbers_are_in_the_metrics_and_summary_and_zero_at_step_0(tiny_llama, corpus_file, tmp_path, isolated_home):
    general = write_jsonl(tmp_path / "general.jsonl", [f"Hello world number {i}, plain English text." for i in range(30)])
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=8, eval_every=4)
    summary = train(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"general_probe": str(general)})}))
    evals = [row for row in metric_rows(tmp_path / "run") if "val_loss" in row]
    assert [row["step"] for row in evals] == [0, 4, 8]
    assert evals[0]["drift_nats"] == 0.0 and evals[0]["retained_ppl_ratio"] == 1.0 and evals[0]["general_drift_nats"] == 0.0
    assert all(math.isfinite(row["drift_nats"]) and row["general_ppl"] > 1 for row in evals)
    assert evals[-1]["drift_nats"] != 0.0 and evals[-1]["general_ppl"] != evals[0]["general_ppl"]
    forgetting = summary["forgetting"]
    assert forgetting["general_probe"] == str(general) and forgetting["best_step"] == summary["best_step"]
    best = next(row for row in evals if row["step"] == summary["best_step"])
    assert forgetting["best_drift_nats"] == best["drift_nats"] and forgetting["best_general_ppl"] == best["general_ppl"]
    assert set(forgetting["base_nll"]) == {"samples", "general"} and forgetting["probe_tokens"] > 0
    assert 0 < forgetting["share_of_evaluation"] < 1 and forgetting["validation_seconds"] > 0
    cached = list((isolated_home / "probes").glob("*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())) >= 2
    markdown, _ = write_report(tmp_path / "run")
    text = markdown.read_text()
    assert "## Forgetting" in text and "forgetting.png" in text and "drift from the base model" in text


def test_a_second_run_reuses_the_cached_samples_and_none_switches_the_probe_off(tiny_gpt2, corpus_file, tmp_path, capsys):
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "a", max_steps=4, eval_every=4))
    assert "sampling" in capsys.readouterr().out
    train(run_config(tiny_gpt2, corpus_file, tmp_path / "b", max_steps=4, eval_every=4))
    assert "sampling" not in capsys.readouterr().out
    cfg = run_config(tiny_gpt2, corpus_file, tmp_path / "c", max_steps=4, eval_every=4)
    summary = train(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"general_probe": "none"})}))
    assert summary["forgetting"] == {"skipped": "monitor.general_probe is none"}
    assert not any("drift_nats" in row for row in metric_rows(tmp_path / "c"))


def test_a_classifier_head_is_probed_through_its_tied_embeddings_or_skipped(tiny_gpt2, tiny_llama, tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labelled(60)))
    tied = train(classify_config(tiny_gpt2, path, tmp_path / "gpt2", "head", epochs=1, eval_every=10))
    assert "best_drift_nats" in tied["forgetting"]
    assert [row["drift_nats"] for row in metric_rows(tmp_path / "gpt2") if "val_loss" in row][0] == 0.0
    untied = train(classify_config(tiny_llama, path, tmp_path / "llama", "head", epochs=1, eval_every=10))
    assert "language-model head" in untied["forgetting"]["skipped"]
    markdown, _ = write_report(tmp_path / "llama")
    assert "Not measured: the classifier's model has no language-model head" in markdown.read_text()


def test_max_drift_holds_the_best_step_to_evaluations_inside_the_budget(tiny_llama, corpus_file, tmp_path, capsys):
    free = train(run_config(tiny_llama, corpus_file, tmp_path / "free", max_steps=8, eval_every=2))
    drifts = {row["step"]: row["drift_nats"] for row in metric_rows(tmp_path / "free") if "val_loss" in row}
    assert free["best_step"] > 0 and drifts[free["best_step"]] > 0
    budget = drifts[free["best_step"]] * 0.99
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "held", max_steps=8, eval_every=2)
    held = train(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"max_drift": budget})}))
    evals = [row for row in metric_rows(tmp_path / "held") if "val_loss" in row]
    inside = [row for row in evals if row["drift_nats"] <= budget]
    assert held["best_step"] == min(inside, key=lambda row: row["val_loss"])["step"] != free["best_step"]
    forgetting = held["forgetting"]
    assert forgetting["max_drift"] == budget and forgetting["best_drift_nats"] <= budget
    assert forgetting["over_drift_steps"] == [row["step"] for row in evals if row["drift_nats"] > budget] != []
    markdown, _ = write_report(tmp_path / "held")
    over = len(forgetting["over_drift_steps"])
    assert f"held to a drift of {budget:g} (monitor.max_drift); {over} evaluation" in markdown.read_text()
    assert main(["train", "--out", str(tmp_path / "held"), "--resume", "--set", "monitor.max_drift=9"]) == 2
    assert "monitor.max_drift is 9.0 here but" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "held"), "--resume", "--set", f"monitor.general_probe={corpus_file}"]) == 2
    assert "it decides the text the drift is measured on" in capsys.readouterr().err
    saved = tmp_path / "held" / "config.yaml"
    text = saved.read_text()
    saved.write_text(text.replace(f"max_drift: {budget}", f"max_drift: '{budget}'"))  # compared as the number it is
    assert main(["train", "--out", str(tmp_path / "held"), "--resume"]) == 0
    capsys.readouterr()
    saved.write_text(text.replace(f"max_drift: {budget}", "max_drift: null"))  # the checkpoint remembers the budget
    assert main(["train", "--out", str(tmp_path / "held"), "--resume"]) == 2
    assert f"monitor.max_drift is null here but was {budget} when" in capsys.readouterr().err
    saved.write_text(text)
    state = sorted((tmp_path / "held" / "checkpoints").glob("step-*"))[-1] / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "settings": [1, 2]}))
    assert main(["train", "--out", str(tmp_path / "held"), "--resume"]) == 2
    assert "state.json is damaged (its record of the settings the run started with is not one)" in capsys.readouterr().err


def test_an_evaluation_over_the_budget_counts_toward_patience(tiny_llama, corpus_file, tmp_path, capsys):
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=8, eval_every=2, patience=2)
    summary = train(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"max_drift": 1e-9})}))
    assert summary["stopped_because"] == "early_stop" and summary["steps"] == 4 and summary["best_step"] == 0
    assert summary["forgetting"]["over_drift_steps"] == [2, 4]
    out = capsys.readouterr().out
    assert "early stop: no improvement in 2 evaluations (2 of them over monitor.max_drift); best step 0" in out
    assert "final/ is the model the run started from: no evaluation within monitor.max_drift 1e-09 improved on it (2 went past" in out


def test_max_drift_is_refused_where_nothing_measures_the_drift(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="max_drift holds the best step to the drift that monitor.general_probe measures"):
        MonitorConfig(max_drift=0.5, general_probe="none")
    with pytest.raises(ValueError, match="not true or false"):
        MonitorConfig(max_drift=True)
    with pytest.raises(ValueError, match="finite number"):
        MonitorConfig(max_drift=float("inf"))
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labelled(60)))
    cfg = classify_config(tiny_llama, path, tmp_path / "llama", "head", epochs=1)
    with pytest.raises(ConfigError, match="monitor.max_drift: this run has no drift .*language-model head.*drop max_drift"):
        train(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"max_drift": 0.5})}))


def with_monitor(cfg, **settings):
    return cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update=settings)})


def test_drift_from_counts_the_drift_from_the_model_an_earlier_run_started_from(tiny_llama, tiny_gpt2, corpus_file, tmp_path, capsys):
    first = train(run_config(tiny_llama, corpus_file, tmp_path / "first", max_steps=8, eval_every=4))
    first_drift = {row["step"]: row["drift_nats"] for row in metric_rows(tmp_path / "first") if "val_loss" in row}
    assert first_drift[first["best_step"]] > 0
    cfg = run_config(tmp_path / "first", corpus_file, tmp_path / "second", max_steps=4, eval_every=4)
    second = train(with_monitor(cfg, drift_from=str(tiny_llama), max_drift=10.0))
    evals = [row for row in metric_rows(tmp_path / "second") if "val_loss" in row]
    assert evals[0]["drift_nats"] == pytest.approx(first_drift[first["best_step"]], abs=1e-5)  # where the first run left it
    assert second["forgetting"]["drift_from"] == str(tiny_llama) and second["forgetting"]["samples_from"] == str(tiny_llama)
    assert second["forgetting"]["base_nll"]["samples"] == pytest.approx(first["forgetting"]["base_nll"]["samples"], abs=1e-6)
    markdown, _ = write_report(tmp_path / "second")
    assert f"drift from {tiny_llama} (nats per token)" in markdown.read_text()
    assert main(["train", "--out", str(tmp_path / "second"), "--resume", "--set", "monitor.drift_from=null"]) == 2
    assert "monitor.drift_from is None here but" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "second"), "--resume", "--set", f"monitor.drift_from={tiny_llama}/"]) == 0
    itself = train(with_monitor(run_config(tiny_llama, corpus_file, tmp_path / "third", max_steps=2, eval_every=2), drift_from=str(tiny_llama)))
    assert abs([row for row in metric_rows(tmp_path / "third") if "val_loss" in row][0]["drift_nats"]) < 1e-6
    assert itself["forgetting"]["drift_from"] == str(tiny_llama)
    with pytest.raises(ConfigError, match="monitor.drift_from: .* has another tokenizer than the model trained"):
        train(with_monitor(run_config(tiny_llama, corpus_file, tmp_path / "fourth", max_steps=2), drift_from=str(tiny_gpt2)))


def test_a_start_over_the_budget_counted_from_another_model_is_kept_only_until_an_evaluation_within_it(
        tiny_llama, corpus_file, tmp_path, capsys):
    first = train(run_config(tiny_llama, corpus_file, tmp_path / "first", max_steps=8, eval_every=4))
    budget = first["forgetting"]["best_drift_nats"] * 0.999  # where the second run starts, counted from tiny_llama
    cfg = run_config(tmp_path / "first", corpus_file, tmp_path / "second", max_steps=8, eval_every=2, lr=1e-3)
    second = train(with_monitor(cfg, drift_from=str(tiny_llama), max_drift=budget))
    out = capsys.readouterr().out
    evals = [row for row in metric_rows(tmp_path / "second") if "val_loss" in row]
    assert evals[0]["drift_nats"] > budget and second["forgetting"]["over_drift_steps"][0] == 0
    assert f"step 0: the model starts {evals[0]['drift_nats']:.3f} nats from {tiny_llama}, over monitor.max_drift" in out
    inside = [row for row in evals[1:] if row["drift_nats"] <= budget]
    assert second["best_step"] == (min(inside, key=lambda row: row["val_loss"])["step"] if inside else 0)
    assert ("it is itself over monitor.max_drift" in out) == (not inside)


def test_patience_waits_for_an_evaluation_within_the_budget_when_the_start_is_over_it(tiny_llama, corpus_file, tmp_path):
    train(run_config(tiny_llama, corpus_file, tmp_path / "first", max_steps=4, eval_every=4))
    cfg = run_config(tmp_path / "first", corpus_file, tmp_path / "second", max_steps=6, eval_every=2, patience=1)
    second = train(with_monitor(cfg, drift_from=str(tiny_llama), max_drift=1e-9))  # no evaluation comes within it
    assert second["steps"] == 6 and second["stopped_because"] != "early_stop" and second["best_step"] == 0
    assert second["forgetting"]["over_drift_steps"] == [0, 2, 4, 6]


def test_a_model_path_is_one_setting_with_or_without_its_trailing_slash(tiny_llama):
    cfg = load_config(None, [("model.name", f"{tiny_llama}/./"), ("monitor.drift_from", f"{tiny_llama}/"),
                             ("monitor.general_probe", "texts/general.txt/")])
    assert cfg.model.name == cfg.monitor.drift_from == str(tiny_llama) and cfg.monitor.general_probe == "texts/general.txt"
    assert MonitorConfig(drift_from="runs/warm//").drift_from == "runs/warm" and MonitorConfig().general_probe == "auto"


def test_a_resume_scores_the_probe_texts_its_checkpoint_kept(tiny_llama, corpus_file, tmp_path, isolated_home, capsys):
    general = write_jsonl(tmp_path / "general.jsonl", [f"Hello world number {i}, plain English text." for i in range(30)])

    def config(out):
        return with_monitor(run_config(tiny_llama, corpus_file, out, max_steps=8, eval_every=2, keep_last=10), general_probe=str(general))

    train(config(tmp_path / "whole"))
    write_jsonl(general, [f"Other words entirely, line {i} of a new file." for i in range(30)])
    for cache in (isolated_home / "probes").glob("*.json"):  # the base model's samples, as if another model's
        cache.write_text(json.dumps({key: {**text, "ids": text["ids"][::-1]} for key, text in json.loads(cache.read_text()).items()}))
    cut = cut_run(tmp_path / "whole", tmp_path / "cut", last_step=4)
    train(config(cut), resume=True)
    assert f"tokens of {general}, as {cut / 'checkpoints'}" in capsys.readouterr().out  # the kept texts, described
    whole, resumed = ([(row["step"], row["drift_nats"], row["general_ppl"]) for row in metric_rows(run) if "val_loss" in row]
                      for run in (tmp_path / "whole", cut))
    assert [row[0] for row in resumed] == [0, 2, 4, 6, 8] and whole[-1][1] != 0.0
    assert np.allclose(resumed, whole, rtol=0, atol=1e-6)
    kept = json.loads((max((cut / "checkpoints").glob("step-*")) / "state.json").read_text())["probe_texts"]
    damage = {"null": (None, "not a mapping of samples and general texts"),
              "empty": ({"samples": [[[1], []]], "general": kept["general"]}, "a text with no scored tokens"),
              "parts": ({"samples": kept["samples"], "general": []}, "they are not texts for the parts the drift's zero was measured on"),
              "ids": ({"samples": [[[1], [1.5]]], "general": kept["general"]}, "a text that is not a list of token ids below")}
    for name, (probe_texts, problem) in [*damage.items(), ("older", (..., ""))]:  # older: a checkpoint from before they were kept
        run = cut_run(tmp_path / "whole", tmp_path / name, last_step=4)
        state = max((run / "checkpoints").glob("step-*")) / "state.json"
        saved = {key: value for key, value in json.loads(state.read_text()).items() if key != "probe_texts"}
        state.write_text(json.dumps(saved if probe_texts is ... else {**saved, "probe_texts": probe_texts}))
        assert main(["train", "--out", str(run), "--resume"]) == (0 if probe_texts is ... else 2)
        captured = capsys.readouterr()
        if probe_texts is ...:
            assert "is from before checkpoints kept the probe's texts, so the texts built now are scored" in captured.out
        else:
            assert f"state.json is damaged (its forgetting probe texts: {problem}" in captured.err
    older = json.loads((max((tmp_path / "older" / "checkpoints").glob("step-*")) / "state.json").read_text())["probe_texts"]
    assert older["general"] != kept["general"]  # the texts built at that resume, kept from then on


def test_drift_from_takes_a_chat_run_whose_tokenizer_adds_the_template_tokens(tiny_llama, tmp_path):
    data = write_format("messages", tmp_path, conversations(24))
    summary = train(with_monitor(chat_config(tiny_llama, data, tmp_path / "chat", max_steps=2, eval_every=2), drift_from=str(tiny_llama)))
    assert summary["forgetting"]["drift_from"] == str(tiny_llama)
    assert all(math.isfinite(row["drift_nats"]) for row in metric_rows(tmp_path / "chat") if "val_loss" in row)


def test_drift_from_is_refused_where_it_counts_nothing(tiny_llama, corpus_file, tmp_path):
    with pytest.raises(ValueError, match="drift_from names the model the drift is counted from, but monitor.general_probe is none"):
        MonitorConfig(drift_from="smollm2-135m", general_probe="none")
    with pytest.raises(ValueError, match="empty; name the model the drift is counted from"):
        MonitorConfig(drift_from="  ")
    with pytest.raises(UserError, match="monitor.drift_from .*nowhere: no such directory; give a model name"):
        train(with_monitor(run_config(tiny_llama, corpus_file, tmp_path / "a", max_steps=2), drift_from=str(tmp_path / "nowhere")))
    head = tmp_path / "head"
    shutil.copytree(tiny_llama, head)
    (head / TASK_FILE).write_text(json.dumps({"task": "classify", "method": "head", "labels": ["a", "b"]}))
    with pytest.raises(UserError, match="monitor.drift_from .*: a classifier.s or reward model.s head writes no text"):
        train(with_monitor(run_config(tiny_llama, corpus_file, tmp_path / "b", max_steps=2), drift_from=str(head)))


def history(drifts: list[float], general: list[float] | None = None) -> list[dict]:
    rows = []
    for i, drift in enumerate(drifts):
        row = {"step": 10 * i, "val_loss": 3.0 - 0.1 * i, "val_ppl": math.exp(3.0 - 0.1 * i), "drift_nats": drift}
        if general:
            row["general_ppl"] = general[i]
        rows.append(row)
    return rows


def test_the_forgetting_finding_fires_on_a_drifting_history_and_stays_silent_on_a_healthy_one():
    facts = RunFacts(lr=5e-4, method="full")
    found = {f.kind: f for f in diagnose(history([0.0, 0.08, 0.2, 0.35], [30.0, 31.0, 33.0, 36.0]), facts)}
    finding = found["forgetting"]
    assert finding.severity == "warning" and finding.evidence["drift_nats"] == 0.35 and finding.evidence["step"] == 30
    assert "0.350 more nats per token" in finding.message and "30.00 -> 36.00" in finding.message
    assert [(a.key, a.value) for a in finding.advice] == [("train.lr", 0.000167), ("model.method", "lora"), ("model.method", "freeze"),
                                                           ("data.replay", 0.1), ("monitor.max_drift", FORGETTING_NATS)]
    assert "forgetting" not in {f.kind for f in diagnose(history([0.0, 0.01, 0.03, FORGETTING_NATS * 0.9]), facts)}
    assert "forgetting" not in {f.kind for f in diagnose(history([0.0]), facts)}
    with_lora_and_replay = {f.kind: f for f in diagnose(history([0.0, 0.5]), RunFacts(lr=1e-3, method="lora", replay=0.1))}
    assert [a.key for a in with_lora_and_replay["forgetting"].advice] == ["train.lr", "monitor.max_drift"]


def test_transfer_gain_of_a_run_without_its_summary_counts_only_evaluations_within_the_budget():
    rows = history([0.0, 0.1, 0.4, 0.9])  # the loss falls at each evaluation; the last drifted past a budget of 0.5

    def best_ppl(facts):
        return {f.kind: f for f in diagnose(rows, facts)}["transfer_gain"].evidence["best_val_ppl"]

    assert best_ppl(RunFacts(max_drift=0.5)) == pytest.approx(math.exp(2.8))
    assert best_ppl(RunFacts()) == pytest.approx(math.exp(2.7))


def test_the_forgetting_finding_judges_the_model_a_drift_budget_keeps():
    budget = RunFacts(lr=5e-4, method="full", max_drift=0.3)
    kept = {f.kind: f for f in diagnose(history([0.0, 0.08, 0.25, 0.35]), budget)}["forgetting"]
    assert kept.evidence == {**kept.evidence, "step": 20, "drift_nats": 0.25}  # step 30 scores better but is over the budget
    assert "monitor.max_drift" not in [a.key for a in kept.advice]
    assert "forgetting" not in {f.kind for f in diagnose(history([0.0, 0.4, 0.5]), budget)}  # the base is kept
    counted = RunFacts(lr=5e-4, method="full", max_drift=0.3, drift_from="smollm2-135m")  # a start already far from it is kept
    start = {f.kind: f for f in diagnose(history([0.6, 0.9, 0.8]), counted)}["forgetting"]
    assert start.evidence["step"] == 0 and "0.600 more nats per token than smollm2-135m on its own text" in start.message


def sources_of(directory, tokenizer) -> dict[str, int]:
    """Tokens of the training file by the marker word each test document starts with."""
    ids = np.fromfile(directory / "train.bin", dtype=np.uint16)
    ends = np.flatnonzero(ids == tokenizer.eos_token_id)
    counts = {"alpha": 0, "beta": 0, "gamma": 0}
    for start, end in zip(np.r_[0, ends[:-1] + 1], ends):
        word = tokenizer.decode(ids[start:end].tolist()).split()[0]
        counts[word] += int(end - start) + 1  # with its EOS
    return counts


@pytest.mark.parametrize("weights", [(0.8, 0.2), (0.3, 0.7), (0.5, 0.25, 0.25)])
def test_weighted_sources_hit_their_shares_within_2_percent(weights, tiny_gpt2, tmp_path):
    names = ["alpha", "beta", "gamma"][: len(weights)]
    sizes = {"alpha": 240, "beta": 60, "gamma": 100}
    sources = []
    for number, name in enumerate(names):
        docs = [f"{name} {doc}" for doc in make_corpus(sizes[name], seed=10 + number, words_per_doc=24 + 16 * number)]
        sources.append({"path": str(write_jsonl(tmp_path / f"{name}.jsonl", docs)), "weight": weights[number]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    cfg = DataConfig(train=sources, block_size=32)
    prepared = prepare_data(cfg, CleanConfig(dedup_near=False), tokenizer, tmp_path / "cache")
    mix = prepared.report["mix"]
    counted = sources_of(prepared.directory, tokenizer)
    total = sum(counted.values())
    for row, name, weight in zip(mix, names, weights):
        assert row["target_share"] == pytest.approx(weight / sum(weights))
        assert abs(row["actual_share"] - row["target_share"]) <= 0.02
        assert abs(counted[name] / total - row["target_share"]) <= 0.02
    assert sum(row["tokens_used"] for row in mix) == prepared.meta["train"]["tokens"] == total
    again = prepare_data(cfg, CleanConfig(dedup_near=False), tokenizer, tmp_path / "cache2")
    assert (again.directory / "train.bin").read_bytes() == (prepared.directory / "train.bin").read_bytes()
    assert any("source" in line and "target" in line for line in prepared.summary_lines())


def test_sources_must_all_be_weighted_or_none_and_replay_is_for_plain_text(tiny_gpt2, tmp_path):
    with pytest.raises(ConfigError, match="give every source a weight"):
        load_config(None, [("data.train", ["a.txt", {"path": "b.txt", "weight": 1}])])
    with pytest.raises(ConfigError, match=r"^data.train.0.weight: must be greater than 0 \(got 0\)$"):
        load_config(None, [("data.train", [{"path": "b.txt", "weight": 0}])])
    with pytest.raises(ConfigError, match="data.train.0.pth: unknown key; allowed: path, weight"):
        load_config(None, [("data.train", [{"pth": "b.txt", "weight": 1}])])
    weighted = load_config(None, [("data.train", [{"path": ["a.txt", "b/"], "weight": 2}, {"path": "c.txt", "weight": 1}])]).data
    assert weighted.train_paths == ["a.txt", "b/", "c.txt"] and weighted.sources == [(["a.txt", "b/"], 2.0), (["c.txt"], 1.0)]
    from tunesmith.tasks import task_kind

    cfg = load_config(None, [("task", "classify"), ("data.replay", 0.1)])
    with pytest.raises(ConfigError, match="data.replay"):
        task_kind(cfg).check(cfg)


def test_replay_never_uses_a_probe_sample(tiny_llama, tmp_path):
    import torch

    sampler = BaseSampler(resolve_model(str(tiny_llama)), torch.device("cpu"), "fp32", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    replay = rehearsal_file(MonitorConfig(), sampler, 24)
    probe = build_probe(MonitorConfig(probe_tokens=4096), sampler, tokenizer, 0)
    assert len(probe.samples) >= 20
    assert all(key < REPLAY_KEYS for key in sampler.cache if tuple(sampler.cache[key].ids) in sampler.probe_ids())
    rehearsed = [json.loads(line)["text"] for line in replay.read_text().splitlines()]
    assert len(rehearsed) >= 16
    probe_texts = {tokenizer.decode(t.ids, skip_special_tokens=True) for t in probe.samples}
    assert not probe_texts & set(rehearsed)
    assert not {tuple(t.ids) for t in probe.samples} & sampler.rehearsal_ids()

    documents = [f"Document {i} about lamps and cables." for i in range(40)]
    general = write_jsonl(tmp_path / "general.jsonl", documents)
    probed, rest = split_general_file(str(general))
    assert len(probed) == 8 and not set(probed) & set(rest) and sorted(probed + rest) == sorted(documents)
    from_file = rehearsal_file(MonitorConfig(general_probe=str(general)), sampler, 24)
    assert {json.loads(line)["text"] for line in from_file.read_text().splitlines()} == set(rest)


def test_pieces_of_a_general_file_fit_the_models_context(tiny_llama):
    from tunesmith.evaluation.forgetting import TEXT_TOKENS, file_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    long_document = " ".join(["the lamp glows when the cable is plugged in and the switch is on"] * 40)
    assert len(tokenizer(long_document).input_ids) > 3 * TEXT_TOKENS
    for context, longest in ((None, TEXT_TOKENS + 1), (128, 128), (64, 64)):
        pieces = file_texts([long_document], tokenizer, budget=10**6, context=context)
        assert max(len(p.prompt) + len(p.ids) for p in pieces) == longest, context


def test_replay_mixes_its_share_of_rehearsal_into_training(tiny_llama, corpus_file, tmp_path):
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=4, eval_every=4)
    summary = train(cfg.model_copy(update={"data": cfg.data.model_copy(update={"replay": 0.2})}))
    report = json.loads((tmp_path / "run").joinpath(summary["data_dir"], "data_report.json").read_text())
    rehearsal = [row for row in report["mix"] if row["rehearsal"]][0]
    assert abs(rehearsal["actual_share"] - 0.2) <= 0.02 and rehearsal["units_used"] > 0
    assert report["documents_kept"] <= report["documents_read"]
    assert report["splits"]["train"]["documents"] == sum(row["units"] for row in report["mix"])
    assert diagnose_run(tmp_path / "run") is not None


def test_a_binary_general_probe_file_is_named_under_its_own_key(tiny_gpt2, corpus_file, tmp_path, capsys):
    from tunesmith.cli import main

    binary = tmp_path / "general.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    code = main(["train", "--model", str(tiny_gpt2), "--data", str(corpus_file), "--out", str(tmp_path / "run"), "--block-size", "32",
                 "--max-steps", "2", "--set", f"monitor.general_probe={binary}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "looks like a binary file" in err[0] and "remove it from monitor.general_probe" in err[0] and "data.train" not in err[0]
