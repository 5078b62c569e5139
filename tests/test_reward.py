"""The reward task: a Bradley-Terry reward model on preference pairs, its export, `predict`, `eval` and `RewardModel`."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

from tunesmith import train
from tunesmith.api import prepare
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.tasks.loss import Validation

from helpers import cut_run, losses

FILLER = "the lamp glows when you press the button twice and the app shows a light".split()
GOOD, BAD = ["green", "works", "lasts"], ["red", "blinks", "broken"]


def rule_pairs(n: int, seed: int = 0) -> list[dict]:
    """Both answers the same filler; the chosen one ends with a good word, the rejected one with a bad word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.sample(FILLER, 5))
        rows.append({"prompt": f"question {i}: " + " ".join(rng.sample(FILLER, 4)), "chosen": f"{filler} {rng.choice(GOOD)}",
                     "rejected": f"{filler} {rng.choice(BAD)}"})
    return rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reward_config(model, data, out, method="full", **train_settings):
    settings = {"lr": 3e-3, "max_steps": 30, "eval_every": 10, "micro_batch_size": 4, "warmup_steps": 2, "precision": "fp32",
                "patience": None}
    settings.update(train_settings)
    overrides = [("task", "reward"), ("model.name", str(model)), ("model.method", method), ("data.train", str(data)),
                 ("data.block_size", 128), ("output.dir", str(out)), ("monitor.tensorboard", False)]
    return load_config(None, overrides + [(f"train.{k}", v) for k, v in settings.items()])


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def reward_run(tiny_llama, tmp_path_factory):
    """A tiny Llama trained (full) as a reward model on the rule pairs, shared by the tests of what a finished run offers."""
    root = tmp_path_factory.mktemp("reward")
    data = write_rows(root / "pairs.jsonl", rule_pairs(160))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(root / "home"))
        train(reward_config(tiny_llama, data, root / "run"))
    return root / "run", data


# the pieces

def test_bradley_terry_loss_and_the_score_that_picks_the_best_step(tiny_llama):
    from tunesmith.tasks import TASKS
    from tunesmith.tasks.reward import pair_losses, reward_metrics

    losses_ = pair_losses(torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert losses_.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log1p(math.exp(2.0))], rel=1e-12)
    m = reward_metrics(np.array([2.0, -1.0, 0.0, 1.0]), np.array([0.5, 1.0, 0.0, -1.0]))
    assert m["pairs"] == 4 and m["pairwise_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx(0.375)  # a tie is a miss
    assert m["chosen_reward_std"] == pytest.approx(np.std([2.0, -1.0, 0.0, 1.0]))
    task = TASKS["reward"].build(reward_config(tiny_llama, "x.jsonl", "out"), {})
    score = lambda accuracy, loss: task.score(Validation(loss=loss, tokens=1, metrics={"pairs": 10, "pairwise_accuracy": accuracy}))  # noqa: E731
    assert score(0.9, 50.0) < score(0.8, 0.01)  # one more pair ranked right outweighs any loss
    assert score(0.8, 0.2) < score(0.8, 0.3)  # the same accuracy: the lower loss wins


@torch.no_grad()
def test_the_reward_is_read_at_the_last_real_token_whatever_the_padding(tiny_llama):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.batch import pad_rows
    from tunesmith.tasks.reward import LastTokenRewards

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).eval()
    module = LastTokenRewards(model)
    rows = [[5, 6, 7, 8, 9], [5, 6], [model.config.eos_token_id, 7, model.config.eos_token_id]]  # a pad that is also a real token
    alone = [float(module(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))) for row in rows]
    for pad in (0, model.config.eos_token_id):
        ids, attention = pad_rows(rows, pad)
        assert module(ids, attention).tolist() == pytest.approx(alone, abs=1e-5)
        shifts = [int((mask == 0).sum()) for mask in attention]
        left = [torch.stack([torch.roll(t[r], shifts[r]) for r in range(len(rows))]) for t in (ids, attention)]
        assert module(*left).tolist() == pytest.approx(alone, abs=1e-4)  # left padding too (Llama's rotary positions are relative)


# data

def test_every_pair_shape_is_read_and_unpaired_feedback_is_refused(tiny_llama, tmp_path, capsys):
    rows = rule_pairs(20) + [{"chosen": "Human: is it on?\nAssistant: the lamp glows green",
                              "rejected": "Human: is it on?\nAssistant: it blinks red"},
                             {"chosen": [{"role": "user", "content": "and now?"}, {"role": "assistant", "content": "it works"}],
                              "rejected": [{"role": "user", "content": "and now?"}, {"role": "assistant", "content": "broken"}]}]
    prepared = prepare(reward_config(tiny_llama, write_rows(tmp_path / "pairs.jsonl", rows), tmp_path / "run"))
    assert sum(prepared.meta["task"]["pairs"].values()) == 22
    mapped = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in rule_pairs(20)]
    cfg = reward_config(tiny_llama, write_rows(tmp_path / "mapped.jsonl", mapped), tmp_path / "run")
    cfg.chat.fields = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    assert sum(prepare(cfg).meta["task"]["pairs"].values()) == 20

    thumbs = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rule_pairs(20)]
    for data in (thumbs, rule_pairs(20) + thumbs[:1]):
        path = write_rows(tmp_path / "feedback.jsonl", data)
        code = main(["prepare", "--task", "reward", "--model", str(tiny_llama), "--data", str(path), "--block-size", "128"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert "Bradley-Terry reward model learns from a comparison" in err[0] and "preference.method kto" in err[0]


# training and what a finished run offers

def test_a_reward_model_learns_the_rule(reward_run):
    run, _ = reward_run
    summary = summary_of(run)
    assert summary["task"] == "reward" and summary["pairs"] > 0
    assert summary["pairwise_accuracy"] >= 0.9 and summary["pairwise_accuracy"] > summary["base_pairwise_accuracy"] + 0.2
    assert summary["reward_margin"] > summary["base_reward_margin"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss", "pairwise_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_reward_std"} <= set(rows[0])
    assert "pairwise accuracy" in (run / "report.md").read_text() and (run / "report.html").is_file()
    spec = json.loads((run / "final" / "tunesmith_task.json").read_text())
    assert spec["task"] == "reward" and spec["end_of_turn"] == "<|im_end|>" and spec["block_size"] == 128


def test_the_export_is_a_plain_sequence_classifier_scoring_as_tunesmith_does(reward_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.tasks.reward import RewardModel

    run, _ = reward_run
    model = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.num_labels == 1 and model.config.id2label == {0: "reward"}
    scorer = RewardModel(str(run), "cpu", log=lambda _: None, precision="fp32")
    pairs = rule_pairs(6, seed=5)
    prompts, answers = [p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    ours = scorer.rewards(prompts, answers, batch_size=4)
    assert ours.dtype == np.float32 and ours.shape == (12,)
    with torch.no_grad():
        for prompt, answer, reward in zip(prompts, answers, ours):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                                                 tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            assert float(model(input_ids=ids).logits[0, 0]) == pytest.approx(float(reward), abs=1e-4)
    assert (ours[:6] > ours[6:]).mean() >= 5 / 6
    messages = [[{"role": "user", "content": p}] for p in prompts]
    assert scorer.rewards(messages, answers).tolist() == pytest.approx(ours.tolist(), abs=1e-5)  # a string is one user message


def test_predict_writes_a_reward_column_and_keeps_every_column(reward_run, tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.inference.predict import predict_file

    run, _ = reward_run
    pair = rule_pairs(1, seed=9)[0]
    rendered = AutoTokenizer.from_pretrained(run / "final").apply_chat_template(
        [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair["chosen"]}], tokenize=False)
    rows = [{"id": 1, "prompt": pair["prompt"], "completion": pair["chosen"]}, {"id": 2, "text": rendered, "extra": {"k": 1}},
            {"id": 3, "note": "no text", "reward": "mine"},
            {"id": 4, "prompt": pair["prompt"], "chosen": pair["rejected"], "rejected": pair["chosen"]}]
    source = write_rows(tmp_path / "in.jsonl", rows)
    said = []
    assert predict_file(str(run), source, tmp_path / "out.jsonl", log=said.append) == 4
    assert any("1 of 4 rows had nothing to score (line 3 of" in line for line in said), said
    assert any("has the column(s) reward, which the output replaces" in line for line in said), said
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3, 4] and out[1]["extra"] == {"k": 1} and out[2]["note"] == "no text"
    assert out[2]["reward"] is None and all(isinstance(out[i]["reward"], float) for i in (0, 1, 3))
    assert out[0]["reward"] == pytest.approx(out[1]["reward"], abs=1e-4)  # the rendered text scores as its prompt and answer
    assert out[0]["reward"] > out[3]["reward"]
    blanks = tmp_path / "blanks.csv"  # an empty cell is no answer: not scored, as the page refuses one; a blank completion
    with blanks.open("w", newline="") as f:  # does not hide the chosen answer; an empty prompt is scored
        csv.writer(f).writerows([["id", "prompt", "completion", "chosen"], [1, "", "", ""], [2, pair["prompt"], "", ""],
                                 [3, pair["prompt"], "", pair["chosen"]], [4, "", pair["chosen"], ""]])
    said = []
    predict_file(str(run), blanks, tmp_path / "blanks_out.jsonl", log=said.append)
    scored = [json.loads(line)["reward"] for line in (tmp_path / "blanks_out.jsonl").read_text().splitlines()]
    assert scored[:2] == [None, None] and scored[2] == pytest.approx(out[0]["reward"], abs=1e-4) and isinstance(scored[3], float)
    assert any("2 of 4 rows had nothing to score (lines 2, 3 of" in line for line in said), said
    latin = tmp_path / "latin.csv"  # a row of empty cells stays a row, so the output lines up with the input
    latin.write_bytes(b"id,prompt,completion\n1,caf\xe9,an answer\n,,\n3,a prompt,an answer\n")
    said = []
    assert predict_file(str(run), latin, tmp_path / "latin_out.csv", log=said.append) == 3
    assert any("1 line is not valid UTF-8" in line for line in said) and any("1 of 3 rows had nothing to score (line 3 of" in line
                                                                             for line in said), said
    empty_parts = write_rows(tmp_path / "parts.jsonl", [{"text": []}, {"text": [{"type": "text", "text": " "}]}, rows[1]])
    said.clear()
    predict_file(str(run), empty_parts, tmp_path / "parts_out.jsonl", log=said.append)
    assert any("2 of 3 rows had nothing to score" in line for line in said), said
    prompts_only = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "p"}])  # no answer column: nothing could be scored
    with pytest.raises(UserError, match="no row has a 'text' field, nor prompt and completion fields"):
        predict_file(str(run), prompts_only, tmp_path / "prompts_out.jsonl")
    long_answer = pair["chosen"] + " and more" * 200_000  # 1.8 MB: cut to what the block keeps before tokenizing
    longs = write_rows(tmp_path / "longs.jsonl", [{"prompt": pair["prompt"], "completion": long_answer},
                                                 {"prompt": pair["prompt"], "completion": long_answer[:20_000]},
                                                 {"text": rendered + " more" * 300_000}, {"text": rendered + " more" * 3000}])
    predict_file(str(run), longs, tmp_path / "longs_out.jsonl")
    long_scores = [json.loads(line)["reward"] for line in (tmp_path / "longs_out.jsonl").read_text().splitlines()]
    assert long_scores[0] == pytest.approx(long_scores[1], abs=1e-5) and long_scores[2] == pytest.approx(long_scores[3], abs=1e-5)
    zapped = tmp_path / "zapped"  # a tokenizer given a token after the model was saved: no embedding row for it
    shutil.copytree(run / "final", zapped)
    vocab = json.loads((zapped / "tokenizer.json").read_text())
    vocab["added_tokens"].append({"id": len(vocab["model"]["vocab"]) + 50, "content": "zapword", "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": False, "special": False})
    (zapped / "tokenizer.json").write_text(json.dumps(vocab))
    zaps = write_rows(tmp_path / "zaps.jsonl", [rows[0], {"text": "a zapword answer"}])
    with pytest.raises(UserError, match=r"--input .*zaps.jsonl:2: the text to score holds token \d+, .* embedding rows"):
        predict_file(str(zapped), zaps, tmp_path / "zaps_out.jsonl")
    transcripts = write_rows(tmp_path / "transcripts.jsonl", [{"chosen": [{"role": "user", "content": "x"}], "text": rows[1]["text"]}])
    predict_file(str(run), transcripts, tmp_path / "transcripts_out.jsonl")  # no prompt: scored by its text, chosen not read
    assert json.loads((tmp_path / "transcripts_out.jsonl").read_text())["reward"] == pytest.approx(out[1]["reward"], abs=1e-4)
    (tmp_path / "a_file").write_text("")
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere.jsonl")
    for output, message in ((tmp_path / "a_file" / "o.jsonl", "a_file is a file, not a folder"), (dangling, "exists")):
        with pytest.raises(UserError, match=message):
            predict_file(str(run), source, output)
    assert dangling.is_symlink() and not (tmp_path / "nowhere.jsonl").exists()
    code = main(["predict", str(run), "--input", str(write_rows(tmp_path / "none.jsonl", [{"x": 1}])), "--output", str(tmp_path / "o.csv")])
    assert code == 2
    assert main(["predict", str(run), "--input", str(source), "--output", str(tmp_path / "o2.jsonl"), "--batch-size", "0"]) == 2
    with pytest.raises(UserError, match="no row has a 'nope' field \\(fields: id, prompt, completion\\); name one of them with --text-field"):
        predict_file(str(run), source, tmp_path / "o3.jsonl", text_field="nope")
    bad = tmp_path / "bad.jsonl"  # each bad row is named by its line in the file, blank lines counted
    for rows_in, line, message in (([rows[0], {"prompt": 7, "completion": "x"}], 3, "a prompt to score is int"),
                                   ([{"text": {"a": 1}}, {"prompt": 7, "completion": "x"}], 1, "the text: a message's content is an object"),
                                   ([{"prompt": "p", "completion": ["x"]}], 1, "the completion: a message's content is an array")):
        bad.write_text(json.dumps(rows_in[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows_in[1:]))
        with pytest.raises(UserError, match=rf"--input .*bad.jsonl:{line}: {message}"):
            predict_file(str(run), bad, tmp_path / "bad_out.jsonl")
        assert not (tmp_path / "bad_out.jsonl").exists()


def test_eval_prints_pairwise_accuracy_and_other_models_are_refused(reward_run, tiny_llama, tmp_path, capsys):
    from tunesmith.tasks.reward import RewardModel

    run, _ = reward_run
    held_out = write_rows(tmp_path / "held_out.jsonl", rule_pairs(30, seed=3))
    assert main(["eval", str(run / "final"), "--data", str(held_out), "--block-size", "128"]) == 0
    line = capsys.readouterr().out
    assert "pairwise accuracy" in line and "over 30 pairs" in line and "Bradley-Terry loss" in line
    with pytest.raises(UserError, match="is not a reward model \\(trained with task lm\\); train one with --task reward"):
        RewardModel(str(tiny_llama))
    assert main(["eval", str(tiny_llama), "--task", "reward", "--data", str(held_out)]) == 2
    assert "is not a trained reward model" in capsys.readouterr().err


def test_a_reward_model_run_is_a_grpo_reward_scoring_as_the_reward_model_does(reward_run, tmp_path):
    from tunesmith.config import GrpoConfig
    from tunesmith.errors import ConfigError
    from tunesmith.tasks.grpo.rewards import Rewards
    from tunesmith.tasks.reward import RewardModel

    run, _ = reward_run
    pairs = rule_pairs(2, seed=11)
    prompts, answers = [p["prompt"] for p in pairs], [pairs[0]["chosen"], pairs[1]["rejected"]]
    rewards = Rewards(GrpoConfig(rewards=[{"run": str(run), "weight": 2.0}]), "cpu")
    total, each = rewards.score(prompts, answers, [5, 5])
    scored = RewardModel(str(run), "cpu").rewards(prompts, answers)
    assert rewards.names == [run.name] and each[run.name] == pytest.approx(scored, abs=1e-5) and total == pytest.approx(2 * scored, abs=1e-5)
    alone = Rewards(GrpoConfig(rewards=[{"run": str(run), "text": "completion"}]), "cpu").score(prompts, answers, [5, 5])[0]
    assert alone == pytest.approx(RewardModel(str(run), "cpu").rewards(["", ""], answers), abs=1e-5)
    for extra, message in (({"label": "positive"}, "is a reward model, which gives one score and no probability; remove label"),
                           ({"scale": "log_odds"}, "is a reward model, which gives one score and no probability; remove scale")):
        with pytest.raises(ConfigError, match=message):
            Rewards(GrpoConfig(rewards=[{"run": str(run), **extra}]))
    (tmp_path / "lm" / "final").mkdir(parents=True)
    (tmp_path / "lm" / "final" / "tunesmith_task.json").write_text(json.dumps({"task": "lm"}))
    with pytest.raises(ConfigError, match="was trained for task lm, which gives no reward; use a classifier run"):
        Rewards(GrpoConfig(rewards=[{"run": str(tmp_path / "lm")}]))


def test_the_page_shows_a_reward_run_by_its_pairwise_accuracy_and_scores_answers(reward_run):
    from fastapi.testclient import TestClient

    from tunesmith.tasks.reward import RewardModel

    from tunesmith.ui import create_app

    run, _ = reward_run
    client = TestClient(create_app(run.parent, port=7860), base_url="http://127.0.0.1:7860")
    row = next(r for r in client.get("/api/runs").json()["runs"] if r["name"] == run.name)
    assert row["task"] == "reward" and row["metric"] == "pairwise accuracy" and row["higher_is_better"]
    assert row["best"] == summary_of(run)["pairwise_accuracy"] and row["base"] == summary_of(run)["base_pairwise_accuracy"]
    page = client.get(f"/runs/{run.name}")
    assert page.status_code == 200 and 'data-kind="score"' in page.text and "score-form" in page.text
    pairs = rule_pairs(8, seed=5)
    scored = {answer: [client.post(f"/api/run/{run.name}/score", json={"prompt": pair["prompt"], "answer": pair[answer]})
                       for pair in pairs] for answer in ("chosen", "rejected")}
    assert all(response.status_code == 200 for responses in scored.values() for response in responses)
    rewards = {answer: np.array([response.json()["reward"] for response in responses]) for answer, responses in scored.items()}
    assert rewards["chosen"] == pytest.approx(RewardModel(str(run)).rewards([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]), abs=1e-3)
    assert (rewards["chosen"] - rewards["rejected"]).mean() > 0
    assert client.post(f"/api/run/{run.name}/score", json={"prompt": "", "answer": pairs[0]["chosen"]}).status_code == 200
    for body, message in (({"prompt": "p", "answer": " "}, "type an answer first"), ({"prompt": "p", "answer": 3}, "answer: send text, not int"),
                          ({"answer": "x", "settings": {"temperature": 1}}, "settings: a reward model takes none")):
        refused = client.post(f"/api/run/{run.name}/score", json=body)
        assert refused.status_code == 400 and message in refused.json()["error"]
    assert client.post(f"/api/run/{run.name}/score", json=["x"]).status_code == 400
    lone = client.post(f"/api/run/{run.name}/score", content=b'{"prompt": "q", "answer": "\\ud800"}', headers={"content-type": "application/json"})
    assert lone.status_code == 400 and "not valid Unicode (a lone surrogate)" in lone.json()["error"]
    refused = client.post(f"/api/run/{run.name}/classify", json={"text": "the lamp"})
    assert refused.status_code == 400 and "is not a classifier (trained with task reward)" in refused.json()["error"]


def test_the_page_loads_a_model_again_when_its_files_change(reward_run, tmp_path):
    import os
    import shutil

    from tunesmith.ui.tryout import Tryout

    final = tmp_path / "final"
    shutil.copytree(reward_run[0] / "final", final)
    tryout = Tryout("cpu")
    held = tryout._load(final, "score")
    assert tryout._load(final, "score") is held
    weights = final / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # a new file copied over it
    assert tryout._load(final, "score") is not held


def test_the_readme_commands_train_lora_and_export_the_head_merged(tiny_llama, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    data, run = write_rows(tmp_path / "pairs.jsonl", rule_pairs(120)), tmp_path / "rm"
    tiny = ["--model", str(tiny_llama), "--block-size", "128"] + [arg for setting in (
        "train.max_steps=30", "train.eval_every=10", "train.lr=1e-2", "train.precision=fp32", "train.micro_batch_size=4",
        "monitor.tensorboard=false") for arg in ("--set", setting)]
    assert main(["train", "--task", "reward", "--data", str(data), "--set", "model.method=lora", "--out", str(run)] + tiny) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    summary = summary_of(run)
    assert summary["method"] == "lora" and summary["pairwise_accuracy"] > summary["base_pairwise_accuracy"] + 0.2
    final = AutoModelForSequenceClassification.from_pretrained(run / "final")
    assert not any("lora" in name for name, _ in final.named_parameters()) and (run / "final-adapter").is_dir()
    held_out = write_rows(tmp_path / "held_out_pairs.jsonl", rule_pairs(20, seed=4))
    assert main(["eval", str(run / "final"), "--data", str(held_out), "--block-size", "128"]) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    answers = write_rows(tmp_path / "answers.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rule_pairs(3, seed=6)])
    assert main(["predict", str(run), "--input", str(answers), "--output", str(tmp_path / "scored.jsonl")]) == 0
    assert all("reward" in json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines())


@pytest.mark.parametrize("method, kind", [("freeze", "llama"), ("full", "gpt2")])
def test_freezing_and_a_gpt2_backbone_learn_too(method, kind, tiny_models, tmp_path):
    cfg = reward_config(tiny_models[kind], write_rows(tmp_path / "pairs.jsonl", rule_pairs(160)), tmp_path / "run", method)
    cfg.model.train_last_layers = 1 if method == "freeze" else None
    summary = train(cfg)
    assert summary["pairwise_accuracy"] > summary["base_pairwise_accuracy"] + 0.2


def test_a_reward_run_resumes_exactly(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", rule_pairs(60))
    config = lambda out: reward_config(tiny_llama, data, out, max_steps=8, eval_every=4, keep_last=5)  # noqa: E731
    train(config(tmp_path / "whole"))
    cut_run(tmp_path / "whole", tmp_path / "cut", last_step=4)
    train(config(tmp_path / "cut"), resume=True)
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)
    assert summary_of(tmp_path / "cut")["pairwise_accuracy"] == pytest.approx(summary_of(tmp_path / "whole")["pairwise_accuracy"])
