"""Standard benchmarks through lm-evaluation-harness: the model handed to lm-eval scores what a hand computation scores
(a plain model, a LoRA run unmerged, a GGUF file), the CLI's one-line errors, and benchmarks during a run."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from tunesmith import train
from tunesmith.cli import main
from tunesmith.diagnose.benchmarks import benchmark_regression
from tunesmith.diagnose.findings import RunFacts
from tunesmith.errors import UserError
from tunesmith.harness import compare_lines, scores_of
from tunesmith.harness.lambada import write_lambada_task
from tunesmith.harness.model import load_for_benchmarks

from helpers import finished_run, losses, run_config


PASSAGES = ["the lamp glows when you press the button twice and the app shows a green light",
            "reset the hub by holding power for ten seconds then pair it again with the phone",
            "battery lasts about six months and the charger uses a standard cable",
            "if the light blinks red the sensor needs cleaning with a dry cloth"]
PAIRS = [("the lamp glows when you press", " the button"), ("reset the hub by holding", " power for ten seconds")]


def quick_run(model, data, out, **train_settings):
    """A tiny run without the forgetting probe and samples, which these tests do not look at."""
    cfg = run_config(model, data, out, **train_settings)
    cfg.monitor.general_probe, cfg.monitor.sample_count = "none", 0
    return cfg


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """A tiny LAMBADA-style task (lm-eval's own lambada_openai on a local file) and a tiny multiple-choice task."""
    root = tmp_path_factory.mktemp("tasks")
    (root / "lambada.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in PASSAGES))
    lambada = write_lambada_task(root / "lambada.jsonl", root / "lambada.yaml", name="tiny_lambada")
    (root / "choices.jsonl").write_text("".join(json.dumps({"question": text.rsplit(" ", 1)[0], "choices": [text.rsplit(" ", 1)[1], "hub", "zebra"],
                                                            "label": 0}) + "\n" for text in PASSAGES))
    choice = {"task": "tiny_choice", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / "choices.jsonl")}},
              "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "label", "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
              "metadata": {"version": 1.0}}
    (root / "choice.yaml").write_text(yaml.safe_dump(choice))
    return {"lambada": lambada, "choice": root / "choice.yaml"}


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context): the continuation's tokens are those of the whole text after the context's (each
    encoded as the tokenizer does by default, with its BOS token where it adds one)."""
    whole = tokenizer(context + continuation).input_ids
    start = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logits[i - 1, whole[i]].item() for i in range(start, len(whole)))


def harness_loglikelihoods(spec: str) -> list[float]:
    from lm_eval.api.instance import Instance

    loaded = load_for_benchmarks(spec, "cpu", "fp32", log=lambda _msg: None)
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(PAIRS)]
    return [logp for logp, _ in loaded.harness_lm(batch_size=2).loglikelihood(requests, disable_tqdm=True)], loaded


def assert_matches_hand(spec, reference_dir):
    """The harness's log-likelihoods against a hand computation with the reference weights and the tokenizer the model came
    with (a GGUF file carries its own, which adds a BOS token)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    got, loaded = harness_loglikelihoods(str(spec))
    expected = [hand_loglikelihood(model, loaded.tokenizer, *pair) for pair in PAIRS]
    assert got == pytest.approx(expected, abs=1e-4)
    return loaded, expected


def test_the_lambada_task_writer_never_overwrites_and_names_bad_data(tmp_path, capsys):
    from tunesmith.harness.lambada import main as lambada

    data = tmp_path / "lam.jsonl"
    data.write_text(json.dumps({"text": PASSAGES[0]}) + "\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "link.yaml").symlink_to(notes)
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "number.jsonl").write_text("5\n")
    for args, message in [([data, data], "already exists"), ([data, tmp_path / "link.yaml"], "already exists"),
                          ([tmp_path / "latin.jsonl", tmp_path / "t.yaml"], "not a JSONL file"),
                          ([tmp_path / "number.jsonl", tmp_path / "t.yaml"], "not a JSONL file"),
                          ([data, tmp_path / "none" / "t.yaml"], "is not a folder")]:
        assert lambada([str(a) for a in args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert notes.read_text() == "mine" and json.loads(data.read_text()) == {"text": PASSAGES[0]}
    done = subprocess.run([sys.executable, "-m", "tunesmith.harness.lambada", str(data), str(tmp_path / "t.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and yaml.safe_load((tmp_path / "t.yaml").read_text())["task"] == "lambada_openai"


def test_a_plain_model_scores_what_a_hand_computation_scores(tiny_gpt2):
    loaded, _ = assert_matches_hand(tiny_gpt2, tiny_gpt2)
    assert loaded.description["kind"] == "model" and loaded.precision == "fp32"


def test_scoring_only_the_continuation_gives_lm_evals_own_figures(tiny_llama):
    """Mixed lengths in one batch, a request longer than the context (truncated from the left; past what the context's
    tokens can spell, its text is cut before it is tokenized), one-token continuations sharing a context (lm-eval's
    cache): the same log-likelihoods and exact-match flags as lm-eval's HFLM, from a tail."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    loaded = load_for_benchmarks(str(tiny_llama), "cpu", "fp32", log=lambda _msg: None)
    long_context = " ".join(PASSAGES * 60)
    from tunesmith.models import token_reach

    assert len(long_context) > token_reach(loaded.tokenizer, 128)  # cut before it is tokenized
    pairs = [*PAIRS, (long_context, " the end"), ("the lamp", " glows"), ("the lamp", " hub"), ("the lamp", " zebra"),
             ("battery lasts about six months and the", " charger uses a standard cable")]
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    kept = []
    forward = loaded.model.forward

    def recording_forward(*args, **kwargs):
        kept.append((kwargs.get("logits_to_keep"), args[0].shape[1]))
        return forward(*args, **kwargs)

    stock = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4, backend="causal").loglikelihood(
        requests, disable_tqdm=True)
    loaded.model.forward = recording_forward
    ours = loaded.harness_lm(batch_size=4).loglikelihood(requests, disable_tqdm=True)
    assert [logp for logp, _ in ours] == pytest.approx([logp for logp, _ in stock], abs=1e-5)
    assert [exact for _, exact in ours] == [exact for _, exact in stock]
    assert kept and all(0 < keep < width for keep, width in kept)


def test_a_lora_run_is_scored_unmerged_as_its_merged_export(tiny_llama, corpus_file, tmp_path):
    cfg = quick_run(tiny_llama, corpus_file, tmp_path / "run", max_steps=6, eval_every=6)
    cfg.model.method = "lora"
    train(cfg)
    loaded, merged = assert_matches_hand(tmp_path / "run", tmp_path / "run" / "final")
    assert type(loaded.model).__name__ == "PeftModelForCausalLM" and "unmerged" in loaded.description["kind"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = [hand_loglikelihood(AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama), *pair)
            for pair in PAIRS]
    assert base != pytest.approx(merged, abs=1e-4)  # the adapters were trained: the figures are theirs, not the base's
    (tmp_path / "run" / "config.yaml").write_text("model: [name")  # what names the base and the precision: refused, not guessed
    with pytest.raises(UserError, match=r"config.yaml is damaged \(not a YAML mapping\); restore it, or benchmark .*/final"):
        load_for_benchmarks(str(tmp_path / "run"), "cpu", log=lambda _msg: None)


def test_a_gguf_file_scores_what_its_run_scores(tiny_llama, tmp_path_factory, tmp_path):
    run = finished_run(tiny_llama, tmp_path_factory.mktemp("gguf-bench"), max_steps=6)[0]
    assert main(["export", str(run), "--out", str(tmp_path / "gguf"), "--dtype", "fp32", "--gguf"]) == 0
    gguf = next((tmp_path / "gguf").glob("*.gguf"))
    assert_matches_hand(gguf, run / "final")


def test_eval_benchmarks_prints_a_table_compares_and_writes_lm_evals_output(tiny_gpt2, tiny_llama, task_files, tmp_path, capsys):
    output = tmp_path / "results.json"
    benchmarks = f"{task_files['lambada']},{task_files['choice']}"
    assert main(["eval", str(tiny_gpt2), "--benchmarks", benchmarks, "--limit", "3", "--output", str(output),
                 "--compare", str(tiny_llama)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_lambada  perplexity" in printed and "tiny_choice" in printed and "beyond 2 stderr" in printed
    written = json.loads(output.read_text())
    assert {"results", "versions", "n-shot", "configs", "config", "tunesmith_model"} <= set(written)
    assert written["results"]["tiny_lambada"]["sample_len"] == 3 and written["n-shot"]["tiny_choice"] == 0
    assert written["tunesmith_model"]["spec"] == str(tiny_gpt2) and written["compared_with"]["tunesmith_model"]["spec"] == str(tiny_llama)


def test_chat_template_wraps_each_item_in_the_models_template(tiny_llama, task_files, tmp_path, capsys):
    """With --chat-template the context is the model's template around the item, as lm-eval's --apply_chat_template
    builds it: the log-likelihood is the hand computation's on that templated context; a model without a template
    is refused in one line."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from test_generate import CHAT_TEMPLATE

    chat = tmp_path / "chat-model"
    shutil.copytree(tiny_llama, chat)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(chat)
    plain, templated = tmp_path / "plain.json", tmp_path / "templated.json"
    for output, flags in ((plain, []), (templated, ["--chat-template"])):
        assert main(["eval", str(chat), "--benchmarks", str(task_files["choice"]), "--limit", "1", "--output", str(output),
                     "--set", "train.precision=fp32", *flags]) == 0
    plain_run, templated_run = (json.loads(path.read_text()) for path in (plain, templated))
    assert templated_run["tunesmith_model"]["chat_template"] and not plain_run["tunesmith_model"]["chat_template"]
    question, answer = PASSAGES[0].rsplit(" ", 1)
    context = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    model = AutoModelForCausalLM.from_pretrained(chat).eval()
    choices = [answer, "hub", "zebra"]
    scores = [hand_loglikelihood(model, tokenizer, context, choice) for choice in choices]
    picked = max(range(3), key=lambda i: scores[i])
    assert templated_run["results"]["tiny_choice"]["acc,none"] == float(picked == 0)
    capsys.readouterr()
    assert main(["eval", str(tiny_llama), "--benchmarks", str(task_files["choice"]), "--limit", "1", "--chat-template"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chat-template" in err[0] and "no chat template" in err[0]


def test_a_folder_of_task_files_runs_every_task_in_it(tiny_gpt2, task_files, capsys):
    assert main(["eval", str(tiny_gpt2), "--benchmarks", str(task_files["choice"].parent), "--limit", "2", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["models"][0]["scores"]
    assert {s["task"] for s in scores} == {"tiny_lambada", "tiny_choice"}


@pytest.mark.parametrize("benchmarks,extra,message", [
    ("missing/task.yaml", [], "no such task file or folder"),
    ("{broken}", [], "the task file does not parse"),
    ("{hub}", [], "cannot be reached offline"),
    ("{choice}", ["--limit", "0"], "--limit 0: the number of items per benchmark must be at least 1"),
    (",", [], "name at least one benchmark"),
    ("{choice}", ["--compare", "runs/missing.gguf"], "model runs/missing.gguf: no such .gguf file"),
    ("{latin}", [], "the task file is not UTF-8 text"),
    ("{choice}", ["--output", "{choice}"], "already exists; name a new .json file"),
])
def test_benchmark_mistakes_are_one_line_and_exit_2(benchmarks, extra, message, tiny_gpt2, task_files, tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read when datasets was imported: no waiting on the network
    (tmp_path / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump({"task": "hub_task", "dataset_path": "EleutherAI/lambada_openai", "test_split": "test",
                                                       "output_type": "loglikelihood", "doc_to_text": "{{text}}", "doc_to_target": "x"}))
    (tmp_path / "latin.yaml").write_bytes(b"task: caf\xe9\n")
    places = {"broken": tmp_path / "broken.yaml", "hub": tmp_path / "hub.yaml", "choice": task_files["choice"],
              "latin": tmp_path / "latin.yaml"}
    named = benchmarks.format(**places)
    written = task_files["choice"].read_bytes()
    assert main(["eval", str(tiny_gpt2), "--benchmarks", named, *(part.format(**places) for part in extra)]) == 2
    assert task_files["choice"].read_bytes() == written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_more_examples_shown_first_than_a_benchmark_has_ends_in_one_line(tiny_gpt2, task_files, capsys):
    assert main(["eval", str(tiny_gpt2), "--benchmarks", str(task_files["choice"]), "--num-fewshot", "50"]) == 2
    err = capsys.readouterr().err
    assert "--num-fewshot 50: a benchmark has fewer items than that" in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("target, message", [("", "a benchmark item has an empty target"),
                                             (" " + " ".join(PASSAGES * 20), "longer than the model's 128-token context")])
def test_a_target_with_nothing_to_score_or_past_the_context_ends_in_one_line(target, message, tiny_gpt2, tmp_path, capsys):
    """lm-eval stops on an assert for these; the user reads which item is wrong and exits with 2."""
    (tmp_path / "items.jsonl").write_text(json.dumps({"context": "the lamp", "target": target}) + "\n")
    (tmp_path / "items.yaml").write_text(yaml.safe_dump({
        "task": "odd_items", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(tmp_path / "items.jsonl")}},
        "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{target}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    assert main(["eval", str(tiny_gpt2), "--benchmarks", str(tmp_path / "items.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--limit", "3"], "--limit applies to benchmarks"), (["--chat-template"], "--chat-template applies to benchmarks"),
    (["--benchmarks", "piqa", "--data", "notes.jsonl"], "--data scores your own data, not benchmarks"),
    (["--benchmarks", "piqa", "--generate"], "--generate scores your own data, not benchmarks"),
])
def test_flags_of_the_other_kind_of_eval_are_refused(tiny_gpt2, flags, message, capsys):
    assert main(["eval", str(tiny_gpt2), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_an_unknown_name_lists_the_closest_names_and_how_to_find_them(tiny_gpt2, capsys):
    assert main(["eval", str(tiny_gpt2), "--benchmarks", "lambada_opnai"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean lambada_openai" in err[0] and "lm-eval ls tasks" in err[0]


def test_scores_compare_beyond_two_standard_errors():
    first = scores_of({"t": {"alias": "t", "acc,none": 0.50, "acc_stderr,none": 0.01, "perplexity,none": 20.0, "perplexity_stderr,none": 1.0}})
    second = scores_of({"t": {"acc,none": 0.55, "acc_stderr,none": 0.01, "perplexity,none": 21.0, "perplexity_stderr,none": 1.0}})
    lines = compare_lines(first, second, ("a", "b"))
    assert [line.split()[-1] for line in lines[1:]] == ["yes", "no"]  # acc: 0.05 > 2 x 0.014; perplexity: 1 < 2 x 1.4
    assert "+0.0500" in lines[1]


def bench_row(step, acc, stderr=0.01, **more):
    return {"step": step, "bench/lambada_openai/acc": acc, "bench/lambada_openai/acc_stderr": stderr, **more}


def test_benchmark_regression_is_found_beyond_two_standard_errors_with_the_drift_beside_it():
    facts = RunFacts(lr=1e-3, method="full")
    history = [bench_row(0, 0.40, val_loss=3.0, drift_nats=0.0), {"step": 10, "val_loss": 2.0, "drift_nats": 0.4},
               bench_row(10, 0.30, bench_of_step=10)]
    finding = benchmark_regression(history, facts)
    assert finding.kind == "benchmark_regression" and "0.4 -> 0.3" in finding.message and "0.400 nats" in finding.message
    assert {a.key for a in finding.advice} >= {"train.lr", "model.method", "data.replay"}
    assert benchmark_regression([bench_row(0, 0.40), bench_row(10, 0.38, bench_of_step=10)], facts) is None  # within the noise
    assert benchmark_regression([bench_row(0, 0.40), bench_row(10, 0.50, bench_of_step=10)], facts) is None  # a rise


def test_benchmarks_during_a_run_reach_metrics_summary_report_and_page(tiny_gpt2, corpus_file, task_files, tmp_path):
    cfg = quick_run(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=8, eval_every=4)
    cfg.monitor.benchmarks = [str(task_files["lambada"]), str(task_files["choice"])]
    cfg.monitor.benchmark_limit, cfg.monitor.benchmark_every = 3, "eval"
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "bench/tiny_choice/acc" in r] == [0, 4, 8, 8]  # and the final model's row, naming its step
    best = next(r for r in rows if r["step"] == summary["best_step"] and "bench/tiny_choice/acc" in r)
    assert rows[-1]["bench_of_step"] == summary["best_step"] and rows[-1]["bench/tiny_lambada/acc"] == best["bench/tiny_lambada/acc"]
    bench = summary["benchmarks"]
    assert {(s["task"], s["metric"]) for s in bench["base"]} == {("tiny_lambada", "perplexity"), ("tiny_lambada", "acc"), ("tiny_choice", "acc")}
    assert bench["final_step"] == summary["best_step"] and bench["limit"] == 3 and bench["seconds"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["benchmarks"] == bench

    assert main(["report", str(tmp_path / "run")]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "tiny_choice acc (benchmark, 3 items)" in report and "benchmarks.png" in report  # three points: a curve

    from tunesmith.ui.runs import RunsFolder

    shown = RunsFolder(tmp_path).detail("run")["benchmarks"]
    assert {name.split(" (")[0] for name, _, _ in shown} == {"tiny_lambada perplexity", "tiny_lambada acc", "tiny_choice acc"}
    assert all(math.isfinite(base) for _, base, _ in shown)
    from fastapi.testclient import TestClient

    from tunesmith.ui import create_app

    page = TestClient(create_app(tmp_path, port=7860), base_url="http://127.0.0.1:7860").get("/runs/run").text
    assert 'id="benchmarks"' in page and "tiny_choice acc" in page


def test_benchmarks_at_the_ends_leave_training_as_it_was(tiny_gpt2, corpus_file, task_files, tmp_path):
    plain = quick_run(tiny_gpt2, corpus_file, tmp_path / "plain", max_steps=6, eval_every=3)
    train(plain)
    cfg = quick_run(tiny_gpt2, corpus_file, tmp_path / "bench", max_steps=6, eval_every=3)
    cfg.monitor.benchmarks, cfg.monitor.benchmark_limit = [str(task_files["choice"])], 2
    summary = train(cfg)
    assert losses(tmp_path / "bench") == losses(tmp_path / "plain")  # the random states and the model's mode are left alone
    rows = [json.loads(line) for line in (tmp_path / "bench" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "bench/tiny_choice/acc" in r] == [0, 6]
    assert rows[-1]["bench_of_step"] == summary["best_step"] and summary["benchmarks"]["every"] == "end"


def test_the_base_models_scores_are_kept_for_the_next_run_of_the_same_base(tiny_gpt2, corpus_file, task_files, tmp_path, monkeypatch,
                                                                           capsys):
    from tunesmith.harness.during import BenchmarkMonitor

    measured = []
    original = BenchmarkMonitor.measure
    monkeypatch.setattr(BenchmarkMonitor, "measure", lambda self, model: measured.append(1) or original(self, model))
    summaries = []
    for name, limit in (("first", 2), ("second", 2), ("more-items", 3)):
        cfg = quick_run(tiny_gpt2, corpus_file, tmp_path / name, max_steps=2, eval_every=2)
        cfg.monitor.benchmarks, cfg.monitor.benchmark_limit = [str(task_files["choice"])], limit
        summaries.append(train(cfg))
        printed = capsys.readouterr().out
        assert ("kept from an earlier run" in printed) == (name == "second"), name
    assert len(measured) == 2 + 1 + 2  # the second run scores only its final model; another limit is another base score
    assert summaries[1]["benchmarks"]["base"] == summaries[0]["benchmarks"]["base"]


def test_an_unknown_benchmark_in_a_run_config_fails_before_training(tiny_gpt2, corpus_file, tmp_path, capsys):
    cfg = quick_run(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=4)
    cfg.monitor.benchmarks = [str(tmp_path / "missing.yaml")]
    with pytest.raises(UserError, match="monitor.benchmarks .*missing.yaml: no such task file"):
        train(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_the_command_line_does_not_import_lm_eval_until_a_benchmark_runs():
    code = ("import sys, tunesmith.cli, tunesmith.diagnose.rules, tunesmith.report.writer, tunesmith.training.recipe, tunesmith.harness; "
            "tunesmith.cli.build_parser(); print('lm_eval' in sys.modules, 'datasets' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]


def test_a_classifier_with_a_head_is_refused_in_one_line(tiny_gpt2, task_files, tmp_path, capsys):
    import shutil

    from tunesmith.tasks import write_task

    classifier = shutil.copytree(tiny_gpt2, tmp_path / "classifier")
    write_task(classifier, {"task": "classify", "method": "head", "labels": ["neg", "pos"]})
    assert main(["eval", str(classifier), "--benchmarks", str(task_files["choice"]), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier with a head" in err[0]
