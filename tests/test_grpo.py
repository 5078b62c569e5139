"""GRPO: the objective against its formula, rewards of every kind and their errors, learning a rule, resume, the findings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tunesmith import train
from tunesmith.cli import main
from tunesmith.config import GrpoConfig, load_config
from tunesmith.diagnose.findings import RunFacts
from tunesmith.diagnose.rules import diagnose
from tunesmith.errors import ConfigError, UserError
from tunesmith.tasks.grpo.objective import KLPenalty, group_advantages, grpo_loss
from tunesmith.tasks.grpo.rewards import Rewards, log_odds

from helpers import classify_config, cut_run, labelled, write_jsonl

VOWELS = 'def vowels(prompts, completions):\n    return [sum(c in "aeiou" for c in t) / max(1, len(t)) for t in completions]\n'


def prompt_file(path, n: int = 40):
    path.write_text("".join(f"the lamp {i} glows when\n" for i in range(n)))
    return path


def grpo_config(model, data, out, rewards, **settings):
    train_settings = {"lr": 1e-2, "max_steps": 8, "eval_every": 4, "micro_batch_size": 4, "warmup_steps": 0, "precision": "fp32",
                      "patience": None, "keep_last": 10}
    train_settings.update(settings.pop("train", {}))
    grpo = {"max_new_tokens": 12, "group_size": 4, "rewards": rewards, **settings}
    overrides = [("task", "grpo"), ("model.name", str(model)), ("data.train", str(data)), ("data.block_size", 64),
                 ("output.dir", str(out)), ("monitor.tensorboard", False), ("monitor.general_probe", "none")]
    return load_config(None, overrides + [(f"grpo.{k}", v) for k, v in grpo.items()] + [(f"train.{k}", v) for k, v in train_settings.items()])


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def by_hand(logps, old, ref, rewards, mask, kind, eps, beta, group, max_new):
    """GRPO's loss written out one completion and one token at a time."""
    n = len(rewards)
    advantages = []
    for i in range(n):
        g = rewards[(i // group) * group : (i // group + 1) * group]
        mean = sum(g) / group
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / (group - 1))
        advantages.append((rewards[i] - mean) / (std + 1e-4) if kind == "grpo" else rewards[i] - mean)
    per_row, total = [], 0.0
    for i in range(n):
        terms = []
        for t in range(len(logps[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logps[i][t] - old[i][t])
            term = -min(ratio * advantages[i], min(max(ratio, 1 - eps), 1 + eps) * advantages[i])
            if beta:
                d = ref[i][t] - logps[i][t]
                term += beta * (math.exp(d) - d - 1)
            terms.append(term)
        per_row.append(sum(terms) / max(1, len(terms)))
        total += sum(terms)
    return sum(per_row) / n if kind == "grpo" else total / (n * max_new)


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
def test_the_loss_is_the_formula_and_micro_batches_add_up_to_the_whole(kind):
    generator = torch.Generator().manual_seed(0)
    n, width, group, eps, beta, max_new = 8, 6, 4, 0.2, 0.04, 10
    logps = -torch.rand(n, width, generator=generator, dtype=torch.float64) * 3
    old = logps + 0.3 * torch.randn(n, width, generator=generator, dtype=torch.float64)
    ref = logps + 0.5 * torch.randn(n, width, generator=generator, dtype=torch.float64)
    mask = torch.ones(n, width)
    mask[1, 4:] = mask[5, 2:] = 0
    rewards = torch.tensor([0.1, 0.9, 0.4, 0.4, 1.0, 0.0, 0.5, 0.2], dtype=torch.float64)
    advantages = group_advantages(rewards, group, kind == "grpo")
    loss, _ = grpo_loss(logps, old, ref, advantages, mask, kind, eps, beta, max_new)
    expected = by_hand(logps.tolist(), old.tolist(), ref.tolist(), rewards.tolist(), mask.tolist(), kind, eps, beta, group, max_new)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    halves = [grpo_loss(logps[s], old[s], ref[s], advantages[s], mask[s], kind, eps, beta, max_new)[0] * 0.5
              for s in (slice(0, 4), slice(4, 8))]
    assert float(sum(halves)) == pytest.approx(expected, abs=1e-6)


def test_one_iteration_has_ratio_one_and_the_policy_gradient():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    loss, terms = grpo_loss(logps, None, None, advantages, torch.ones(2, 2), "grpo", 0.2, 0.0, 2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0) and not terms.clipped.any()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.25, 0.25])  # -A / (tokens * completions)


def test_equal_rewards_give_zero_advantages():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    advantages = group_advantages(rewards, 3, scale=True)
    assert advantages[:3].abs().max() == 0 and advantages[3:].abs().max() > 0.5


def test_built_in_rewards_score_what_they_say(tmp_path):
    cfg = GrpoConfig(rewards=[{"length": 4}, {"regex": r"\d", "must_match": False}, {"avoid": ["bad", "awful"], "weight": 2.0}])
    total, each = Rewards(cfg).score(["p", "p", "p"], ["a bad 1", "fine", "Awful, bad"], [4, 2, 9])
    assert each["length"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert each["regex"].tolist() == [0.0, 1.0, 1.0]
    assert each["avoid"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert total.tolist() == pytest.approx([2.0, 3.5, 1.0])


def test_a_python_reward_that_fails_names_the_function_and_the_row(tmp_path):
    (tmp_path / "rw.py").write_text("def picky(prompts, completions):\n    return [1 / len(c) for c in completions]\n")
    rewards = Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/rw.py:picky"}]))
    assert rewards.score(["a", "b"], ["xx", "x"], [1, 1])[1]["picky"].tolist() == [0.5, 1.0]
    with pytest.raises(UserError, match=r"rw.py:picky failed on row 1 \(prompt 'b', completion ''\): ZeroDivisionError"):
        rewards.score(["a", "b"], ["xx", ""], [1, 0])
    (tmp_path / "bad.py").write_text("def few(prompts, completions):\n    return [1.0]\n")
    with pytest.raises(UserError, match="bad.py:few failed on a batch of 2: ValueError: returned 1 value for 2 completions"):
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/bad.py:few"}])).score(["a", "b"], ["x", "y"], [1, 1])
    (tmp_path / "quits.py").write_text("import sys\ndef stop(prompts, completions):\n    sys.exit(3)\n")
    with pytest.raises(UserError, match=r"quits.py:stop failed on row 0 .*SystemExit"):
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/quits.py:stop"}])).score(["a"], ["x"], [1])
    (tmp_path / "broken.py").write_text("import no_such_module_here\ndef f(prompts, completions):\n    return [0.0]\n")
    with pytest.raises(UserError, match=r"importing .*broken.py failed: ModuleNotFoundError: No module named 'no_such_module_here'; fix the file"):
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/broken.py:f"}]))
    with pytest.raises(ConfigError, match="has no function missing"):
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/rw.py:missing"}]))
    with pytest.raises(ConfigError, match="does not exist"):
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/nowhere.py:f"}]))


def test_rewards_as_tensors_count_and_a_sum_past_the_limit_is_refused_in_one_line(tmp_path):
    (tmp_path / "rw.py").write_text("import torch\ndef ones(prompts, completions):\n    return torch.ones(len(completions))\n"
                                    "def huge(prompts, completions):\n    return [1e308 * (i % 2) for i in range(len(completions))]\n")
    assert Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/rw.py:ones"}])).score(["a", "b"], ["x", "y"], [1, 1])[0].tolist() == [1, 1]
    with pytest.raises(UserError) as caught:
        Rewards(GrpoConfig(rewards=[{"python": f"{tmp_path}/rw.py:huge", "weight": 2}])).score(["a", "b"], ["x", "y"], [1, 1])
    assert len(caught.value.lines()) == 1 and "the weighted sum of the rewards is inf for the completion of 'b'" in str(caught.value)
    for settings in ({"beta": float("inf")}, {"beta": 1e300}, {"rewards": [{"length": 4, "weight": 1e308}]}):
        with pytest.raises(ValueError):
            GrpoConfig(**settings)


def test_reward_settings_are_checked_with_the_config(tiny_llama, tmp_path, capsys):
    data = prompt_file(tmp_path / "p.txt")
    for rewards, message in (([], "a GRPO run needs at least one reward"),
                             ([{"run": str(tmp_path / "nowhere"), "label": "positive"}], "is not a finished tunesmith run"),
                             ([{"regex": "(", "weight": 1}], "not a regular expression"),
                             ([{"avoid": ["sorry", " "]}], "an empty word is found in every completion"),
                             ([{"length": 5, "regex": "a"}], "give exactly one of")):
        (tmp_path / "c.yaml").write_text(json.dumps({"task": "grpo", "model": {"name": str(tiny_llama)}, "data": {"train": str(data)},
                                                      "grpo": {"rewards": rewards}}))
        assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def sentiment_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    path = write_jsonl(root / "reviews.jsonl", [json.dumps(r) for r in labelled(60)])
    path.write_text("".join(json.dumps(r) + "\n" for r in labelled(60)))
    train(classify_config(tiny_models["gpt2"], path, root / "run", "head", epochs=1))
    return root / "run"


def test_a_classifier_run_is_a_reward_and_its_labels_are_checked(sentiment_run):
    rewards = Rewards(GrpoConfig(rewards=[{"run": str(sentiment_run), "label": "positive"}]))
    total, each = rewards.score(["x", "y"], [" wonderful", " awful"], [1, 1])
    assert rewards.names == ["run:positive"] and ((0 <= total) & (total <= 1)).all()
    with pytest.raises(ConfigError, match="has no label 'happy'; its labels are negative, positive"):
        Rewards(GrpoConfig(rewards=[{"run": str(sentiment_run), "label": "happy"}]))
    with pytest.raises(ConfigError, match="name the label whose probability is the reward"):
        Rewards(GrpoConfig(rewards=[{"run": str(sentiment_run)}]))
    odds = Rewards(GrpoConfig(rewards=[{"run": str(sentiment_run), "label": "positive", "scale": "log_odds"}]))
    logit, _ = odds.score(["x", "y"], [" wonderful", " awful"], [1, 1])
    assert np.allclose(logit, np.log(total / (1 - total)), atol=1e-4)
    empty = Rewards(GrpoConfig(rewards=[{"run": str(sentiment_run), "label": "negative", "text": "completion", "scale": "log_odds",
                                         "weight": -1.0}]))
    assert empty.score(["x"], [""], [0])[0].tolist() == [0.0]  # no verdict on nothing: neither side's extreme
    with pytest.raises(ConfigError, match="scale: log_odds applies to a classifier run's probability"):
        Rewards(GrpoConfig(rewards=[{"length": 5, "scale": "log_odds"}]))


def test_the_kl_controller_moves_beta_toward_the_target_by_a_bounded_step():
    penalty = KLPenalty(0.04, target=0.5, horizon=100)
    penalty.update(0.6, completions=50)  # 20% over: beta rises by e^(0.2 x 50 / 100)
    assert penalty.value == pytest.approx(0.04 * math.exp(0.1))
    penalty.update(100.0, completions=50)  # far over: the error is bounded at 20%
    assert penalty.value == pytest.approx(0.04 * math.exp(0.2))
    penalty.update(float("nan"), completions=50)  # no finite KL: no move
    assert penalty.value == pytest.approx(0.04 * math.exp(0.2))
    penalty.update(0.0, completions=50)  # under the target: lowered
    assert penalty.value == pytest.approx(0.04 * math.exp(0.1))
    penalty.update(0.0, completions=1000)  # never under grpo.beta, however large the batch
    assert penalty.value == 0.04
    unreachable = KLPenalty(0.04, target=1e-9, horizon=1)
    for _ in range(100):
        unreachable.update(1.0, completions=10**6)  # at most e^0.2 a step, and never past 100 x grpo.beta
    assert unreachable.value == pytest.approx(4.0)
    fixed = KLPenalty(0.04)
    fixed.update(100.0, completions=100)
    assert fixed.value == 0.04 and not fixed.adapts
    with pytest.raises(ConfigError, match="target_kl adapts grpo.beta, which is 0"):
        load_config(None, [("task", "grpo"), ("grpo.beta", 0), ("grpo.target_kl", 0.5)])
    with pytest.raises(ConfigError, match="not true or false"):
        load_config(None, [("task", "grpo"), ("grpo.target_kl", True)])


def test_log_odds_rank_what_the_probability_saturates_and_stay_finite():
    assert np.allclose(log_odds(np.array([0.5, 0.99, 0.9999])), [0.0, np.log(99), np.log(9999)])
    ends = log_odds(np.array([0.0, 1.0]))
    assert np.isfinite(ends).all() and ends[0] == pytest.approx(-ends[1]) and 13 < ends[1] < 14


def test_a_tiny_model_learns_a_rule_reward(tiny_llama, tmp_path):
    (tmp_path / "rw.py").write_text(VOWELS)
    data = prompt_file(tmp_path / "p.txt")
    summary = train(grpo_config(tiny_llama, data, tmp_path / "run", [{"python": f"{tmp_path}/rw.py:vowels"}], group_size=8,
                                train={"max_steps": 24, "eval_every": 8}))
    assert summary["task"] == "grpo" and summary["reward"] > summary["base_reward"] + 0.1
    history = rows(tmp_path / "run")
    step = history[3]
    assert {"reward", "reward/vowels", "reward_std", "equal_groups", "completion_length", "gen_tokens_per_s", "clipped_share",
            "kl", "train_loss", "train_tokens_per_s"} <= set(step)
    assert step["train_tokens_per_s"] > step["tokens_per_s"] > 0  # the step's training alone, without its sampling
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "text", "reward", "reward/vowels"} <= set(samples[0])
    assert json.loads((tmp_path / "run" / "final" / "tunesmith_task.json").read_text())["task"] == "grpo"
    assert not [f for f in diagnose(history, RunFacts(lr=1e-2)) if f.kind in ("underfitting", "lr_too_low", "instability", "transfer_gain")]


@pytest.mark.parametrize("iterations", [1, 2])
def test_a_grpo_run_resumes_exactly(tiny_llama, tmp_path, iterations):
    """Cut after step 3: with two iterations, inside a round, whose completions the checkpoint keeps."""
    data = prompt_file(tmp_path / "p.txt")
    adaptive = {"target_kl": 1e-4, "kl_horizon": 8} if iterations == 2 else {}  # the penalty's weight is kept too
    config = lambda out: grpo_config(tiny_llama, data, out, [{"regex": "e"}, {"length": 6}], iterations=iterations,  # noqa: E731
                                     train={"max_steps": 6, "eval_every": 3, "save_every": 3}, **adaptive)
    train(config(tmp_path / "whole"))
    if adaptive:
        betas = [row["beta"] for row in rows(tmp_path / "whole") if "beta" in row]
        assert len(betas) == 6 and betas[-1] > betas[1]  # raised once the policy moved past the target
    cut_run(tmp_path / "whole", tmp_path / "cut", last_step=3)
    if adaptive:  # another KL target would restart the penalty's weight from a checkpoint that adapted it to this one
        with pytest.raises(UserError, match="--resume: grpo.target_kl is"):
            train(grpo_config(tiny_llama, data, tmp_path / "cut", [{"regex": "e"}, {"length": 6}], iterations=iterations,
                              train={"max_steps": 6, "eval_every": 3, "save_every": 3}, target_kl=0.5, kl_horizon=8), resume=True)
    if iterations == 1:  # other rewards make another loss: its best step and curves would mix two scales
        other = grpo_config(tiny_llama, data, tmp_path / "cut", [{"regex": "e"}], train={"max_steps": 6, "eval_every": 3, "save_every": 3})
        with pytest.raises(UserError, match="--resume: grpo.rewards is"):
            train(other, resume=True)
    train(config(tmp_path / "cut"), resume=True)
    if adaptive:
        assert json.loads((tmp_path / "cut" / "summary.json").read_text())["final_beta"] == pytest.approx(betas[-1])
    keys = ("train_loss", "reward", "kl", "clipped_share", "beta")
    flat = lambda run: [row.get(k, -1.0) for row in rows(run) for k in keys]  # noqa: E731
    assert flat(tmp_path / "cut") == pytest.approx(flat(tmp_path / "whole"), abs=1e-6)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_lora_grpo_uses_the_adapters_off_as_its_reference(checkpointed, tiny_llama, tmp_path, capsys):
    """With gradient checkpointing too, whose backward recomputes the blocks outside the forward's attention kernel:
    every pass then keeps the default kernel (with the forward's, the recomputation would save other tensors and fail)."""
    data = prompt_file(tmp_path / "p.txt")
    cfg = grpo_config(tiny_llama, data, tmp_path / "run", [{"regex": "e"}], train={"max_steps": 2, "eval_every": 2, "precision": "bf16"})
    cfg.model.method = "lora"
    cfg.model.gradient_checkpointing = checkpointed
    summary = train(cfg)
    assert "frozen copy" not in capsys.readouterr().out and summary["method"] == "lora"
    history = rows(tmp_path / "run")
    assert history[1]["kl"] == pytest.approx(0.0, abs=1e-7) and history[2]["kl"] > 0  # the adapters start as no change


def test_messages_need_a_chat_template_and_prompts_are_counted(tiny_llama, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"hello {i}"}]}) + "\n" for i in range(20)))
    (tmp_path / "c.yaml").write_text(json.dumps({"task": "grpo", "model": {"name": str(tiny_llama)}, "data": {"train": str(data)},
                                                  "grpo": {"rewards": [{"regex": "a"}]}}))
    assert main(["prepare", str(tmp_path / "c.yaml"), "--block-size", "128"]) == 2
    assert "prompts given as messages need a model with a chat template" in capsys.readouterr().err


def test_an_empty_and_an_over_long_prompt_are_dropped_and_counted(tiny_llama, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    prompts = [f"reset the hub {i}" for i in range(6)] + ["", "the hub " * 40]
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (tmp_path / "c.yaml").write_text(json.dumps({"task": "grpo", "model": {"name": str(tiny_llama)}, "data": {"train": str(data)},
                                                  "grpo": {"rewards": [{"regex": "a"}], "max_new_tokens": 8}}))
    assert main(["prepare", str(tmp_path / "c.yaml"), "--block-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "empty prompt" in out and "prompt beyond block size" in out
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the hub " * 40] * 3 + [""]))
    assert main(["prepare", str(tmp_path / "c.yaml"), "--block-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "4 read, 2 removed as exact duplicate, 1 as empty prompt, 1 as prompt beyond block size" in err or \
        "4 read, 2 removed as exact duplicate, 1 as prompt beyond block size, 1 as empty prompt" in err, err


def test_a_plain_prompt_holding_a_special_tokens_text_is_that_text(tiny_llama):
    from transformers import AutoTokenizer

    from tunesmith.tasks.grpo.prompts import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = prompt_ids(tokenizer, f"the lamp{tokenizer.eos_token} glows")
    assert tokenizer.eos_token_id not in ids and tokenizer.eos_token in tokenizer.decode(ids)


def test_grpo_findings_fire_on_their_patterns_and_stay_silent_on_a_healthy_run():
    def history(rewards, kls, equal, distinct):
        out = [{"step": 0, "val_reward": rewards[0], "val_distinct_2": distinct[0], "val_completion_length": 20.0}]
        for step in range(1, 21):
            out.append({"step": step, "reward": rewards[0], "kl": kls, "equal_groups": equal, "train_loss": 0.0})
        out.append({"step": 20, "val_reward": rewards[1], "val_distinct_2": distinct[1], "val_completion_length": 19.0})
        return out

    kinds = lambda h: {f.kind for f in diagnose(h, RunFacts(lr=1e-5, grpo_beta=0.04, grpo_temperature=1.0, grpo_group_size=8))}  # noqa: E731
    assert not kinds(history((0.4, 0.7), 0.05, 0.1, (0.8, 0.75))) & {"reward_hacking", "no_signal", "kl_blowup"}
    assert "reward_hacking" in kinds(history((0.4, 0.9), 0.05, 0.1, (0.8, 0.3)))
    assert "reward_hacking" in kinds(history((0.4, 0.9), 2.5, 0.1, (0.8, 0.75)))
    assert "kl_blowup" in kinds(history((0.4, 0.4), 2.5, 0.1, (0.8, 0.75)))
    found = [f for f in diagnose(history((0.4, 0.4), 0.01, 0.8, (0.8, 0.8)), RunFacts(grpo_temperature=1.0, grpo_group_size=8))
             if f.kind == "no_signal"]
    assert found and [a.key for a in found[0].advice][:2] == ["grpo.temperature", "grpo.group_size"]


def test_the_page_shows_a_grpo_runs_rewards_and_its_try_it_scores_a_completion(tiny_llama, tmp_path):
    from fastapi.testclient import TestClient

    from tunesmith.ui import create_app

    (tmp_path / "rw.py").write_text(VOWELS)
    data = prompt_file(tmp_path / "p.txt")
    train(grpo_config(tiny_llama, data, tmp_path / "runs" / "steer", [{"regex": "e"}, {"python": f"{tmp_path}/rw.py:vowels"}],
                      train={"max_steps": 2, "eval_every": 2}))
    client = TestClient(create_app(tmp_path / "runs", port=7860), base_url="http://127.0.0.1:7860")
    row = next(r for r in client.get("/api/runs").json()["runs"] if r["name"] == "steer")
    assert row["metric"] == "mean reward" and row["higher_is_better"]
    summary = json.loads((tmp_path / "runs" / "steer" / "summary.json").read_text())
    assert (row["base"], row["best"]) == (summary["base_reward"], summary["reward"]) and row["best"] is not None
    tried = client.post("/api/run/steer/generate", json={"prompt": "the lamp", "settings": {"temperature": 0, "max_new_tokens": 6}})
    body = tried.json()
    assert tried.status_code == 200 and set(body["rewards"]) == {"total", "regex"} and body["not_scored"] == ["vowels (Python, not run from the page)"]
    assert body["rewards"]["regex"] == float("e" in body["text"])
    refused = client.post("/api/run/steer/score", json={"prompt": "the lamp", "answer": "glows"})
    assert refused.status_code == 400 and "is not a reward model (trained with task grpo)" in refused.json()["error"]


def test_the_pages_length_reward_counts_the_stop_token_as_training_does(tmp_path):
    from tunesmith.inference.generation import Completion
    from tunesmith.ui.tryout import Tryout

    config = {"grpo": {"rewards": [{"length": 4}]}}
    for stop_id, expected in ((2, 1.0), (None, 0.75)):  # 3 tokens, and the stop token that ended them
        completion = Completion(text="abc", finish_reason="length" if stop_id is None else "stop", tokens=3, ids=[5, 6, 7], stop_id=stop_id)
        assert Tryout().rewards(config, lambda path: path, "p", completion)["rewards"]["length"] == expected


def test_completion_log_probs_line_up_with_a_full_forward(tiny_llama):
    """Prompts of different lengths left-padded, completions right-padded: each completion token's log-prob is the one a
    plain forward pass over that row alone gives it."""
    from transformers import AutoModelForCausalLM

    from tunesmith.tasks.grpo.rollout import StepStats, completion_logps, group_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    rows_ = [([5, 6, 7], [8, 9, 10, 11]), ([12], [13, 14]), ([15, 16], [])]
    batch = group_batch(rows_, torch.zeros(3), pad_id=0, stats=StepStats())
    with torch.no_grad():
        got = completion_logps(model, batch, temperature=0.7)
        for r, (prompt, completion) in enumerate(rows_):
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float() / 0.7
            expected = logits.log_softmax(-1)[len(prompt) - 1 : -1].gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
            assert got[r, : len(completion)].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
            assert batch.completion_mask[r].sum() == len(completion)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sliced_token_log_probs_and_their_gradient_equal_the_plain_formula(dtype, temperature, monkeypatch):
    """Several slices (a tiny slice size), logits with one position more than is scored, fp32 logits left untouched."""
    from tunesmith.tasks.grpo import logprobs

    monkeypatch.setattr(logprobs, "SLICE_BYTES", 2 * 3 * 50 * 4)  # two rows a slice: three slices of five rows
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 4, 50, generator=generator) * 3).to(dtype)
    tokens = torch.randint(0, 50, (5, 3), generator=generator)
    weights = torch.randn(5, 3, generator=generator)
    ours_in, plain_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = logprobs.token_logprobs(ours_in, tokens, temperature)
    scaled = plain_in[:, :3].float() / temperature
    plain = scaled.gather(-1, tokens[..., None]).squeeze(-1) - scaled.logsumexp(-1)
    (ours * weights).sum().backward()
    (plain * weights).sum().backward()
    assert ours.dtype == torch.float32 and torch.allclose(ours, plain, atol=1e-6)
    exact = dtype == torch.float32  # else the gradient is stored in bf16, each side rounding once
    assert ours_in.grad.dtype == dtype and torch.allclose(ours_in.grad.float(), plain_in.grad.float(), atol=1e-6 if exact else 1e-3,
                                                          rtol=0 if exact else 2**-7)
    assert torch.equal(ours_in.detach(), logits) and not ours_in.grad[:, 3].any()
    assert logprobs.token_logprobs(logits, tokens[:, :0]).shape == (5, 0)  # nothing to score


def test_iterations_take_several_steps_on_one_batch_of_completions(tiny_llama, tmp_path):
    data = prompt_file(tmp_path / "p.txt")
    train(grpo_config(tiny_llama, data, tmp_path / "run", [{"regex": "e"}], iterations=2, train={"max_steps": 4, "eval_every": 4}))
    steps = [row for row in rows(tmp_path / "run") if "sample_seconds" in row]
    assert [row["reward"] for row in steps][0::2] == [row["reward"] for row in steps][1::2]  # the round's completions, twice
    assert steps[0]["sample_seconds"] == steps[1]["sample_seconds"] and steps[1]["clipped_share"] >= 0


def test_beta_zero_takes_no_reference_pass_and_holds_no_copy(tiny_llama, tmp_path, capsys):
    data = prompt_file(tmp_path / "p.txt")
    train(grpo_config(tiny_llama, data, tmp_path / "run", [{"regex": "e"}], beta=0.0, train={"max_steps": 2, "eval_every": 2}))
    steps = [row for row in rows(tmp_path / "run") if "sample_seconds" in row]
    assert len(steps) == 2 and not any("reference_seconds" in row or "kl" in row for row in steps)
    assert "frozen copy" not in capsys.readouterr().out
    train(grpo_config(tiny_llama, data, tmp_path / "kl", [{"regex": "e"}], train={"max_steps": 2, "eval_every": 2}))
    assert all("reference_seconds" in row and "kl" in row for row in rows(tmp_path / "kl") if "sample_seconds" in row)
    assert "holding a frozen copy of the model as the KL reference" in capsys.readouterr().out


def test_eval_gives_a_grpo_runs_mean_reward_on_a_prompt_file(tiny_llama, tmp_path, capsys):
    data = prompt_file(tmp_path / "p.txt")
    train(grpo_config(tiny_llama, data, tmp_path / "run", [{"regex": "e"}, {"length": 6}], train={"max_steps": 2, "eval_every": 2}))
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("the lamp glows\nthe button is\nwhen the app\n")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(held_out)]) == 0
    line = capsys.readouterr().out
    assert "mean reward" in line and "(regex " in line and "length " in line and "over 3 prompts" in line and "distinct-2" in line
    assert main(["eval", str(tmp_path / "run"), "--data", str(held_out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # strict JSON: a figure the task has not is null, not NaN
    assert result["metrics"]["prompts"] == 3 and result["perplexity"] is None


def test_short_rows_on_a_cpu_attend_through_the_math_kernel():
    from tunesmith.runtime import SHORT_ATTENTION, attention_kernels

    with attention_kernels(torch.device("cpu"), SHORT_ATTENTION):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    with attention_kernels(torch.device("cpu"), SHORT_ATTENTION + 1):
        assert torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
