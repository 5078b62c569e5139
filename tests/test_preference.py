"""Instruction data (prompt/completion, Alpaca), NEFTune, and preference tuning (DPO, ORPO, KTO) on tiny models."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith import train
from tunesmith.api import prepare, preview
from tunesmith.cli import main
from tunesmith.config import ChatConfig, PreferenceConfig, load_config
from tunesmith.data.conversations import parse_record
from tunesmith.data.preferences import CHOSEN, DESIRABLE, KL_ROW, REJECTED, UNDESIRABLE, parse_judged
from tunesmith.diagnose.rules import diagnose
from tunesmith.diagnose.rules import RunFacts
from tunesmith.tasks.objectives import Objective
from tunesmith.training.neftune import add_embedding_noise

from helpers import cut_run, losses


PHRASES = ["the lamp glows when you press the button", "reset the hub by holding power for ten seconds",
           "the app shows a green light then pair it", "battery lasts about six months and the charger"]
WORDS = "the lamp glows when you press the button twice and the app shows a green light reset the hub".split()


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ordered_pairs(n: int, seed: int = 0) -> list[dict]:
    """The chosen answer is a phrase in its order, the rejected the same words shuffled: a rule, with no length to exploit."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = rng.choice(PHRASES)
        shuffled = chosen.split()
        while " ".join(shuffled) == chosen:
            rng.shuffle(shuffled)
        rows.append({"prompt": " ".join(rng.sample(WORDS, 6)), "chosen": chosen, "rejected": " ".join(shuffled)})
    return rows


def preference_config(model, data, out, method="dpo", **train_settings):
    settings = {"lr": 3e-3, "max_steps": 40, "eval_every": 10, "micro_batch_size": 4, "warmup_steps": 2, "precision": "fp32",
                "patience": None}
    settings.update(train_settings)
    overrides = [("task", "preference"), ("preference.method", method), ("model.name", str(model)), ("data.train", str(data)),
                 ("data.block_size", 128), ("output.dir", str(out)), ("monitor.tensorboard", False)]
    return load_config(None, overrides + [(f"train.{k}", v) for k, v in settings.items()])


# instruction data

def test_instruction_formats_parse_and_field_names_map():
    cfg = ChatConfig()
    assert parse_record({"prompt": "Hi?", "completion": "Hello."}, cfg, "x") == [
        {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    as_messages = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}], "completion": "Hello."}
    assert [m["role"] for m in parse_record(as_messages, cfg, "x")] == ["system", "user", "assistant"]
    assert parse_record({"instruction": "Sum.", "input": "2 2", "output": "4"}, cfg, "x")[0]["content"] == "Sum.\n\n2 2"
    assert parse_record({"instruction": "Say hi.", "input": "", "output": "hi"}, cfg, "x")[0]["content"] == "Say hi."
    mapped = ChatConfig(fields={"prompt": "question", "completion": "answer"})
    assert parse_record({"question": "Q", "answer": "A"}, mapped, "x")[1] == {"role": "assistant", "content": "A"}
    assert parse_record({"instruction": "I", "output": "O"}, ChatConfig(format="prompt_completion"), "x") is None


def test_instruction_loss_falls_on_the_answer_and_its_end_marker_only(tiny_llama, tmp_path):
    rows = [{"instruction": f"Classify review {i}.", "input": "the lamp glows", "output": "positive"} for i in range(6)]
    rows += [{"prompt": f"question {i}", "completion": "press the button twice"} for i in range(6)]
    data = write_rows(tmp_path / "mixed.jsonl", rows)
    cfg = load_config(None, [("task", "chat"), ("model.name", str(tiny_llama)), ("data.train", str(data)), ("data.block_size", 128),
                             ("clean.dedup_near", False)])
    shown = preview(cfg, prepare(cfg), 12)
    assert any("Classify review" in text for text in shown) and any("question" in text for text in shown)
    for text in shown:
        marked = text[text.index("⟦"):]
        assert marked in ("⟦positive<|im_end|>⟧\n", "⟦press the button twice<|im_end|>⟧\n")
        assert text.count("⟦") == 1
    everything = cfg.model_copy(update={"chat": cfg.chat.model_copy(update={"train_on_prompt": True})})
    assert all(text.startswith("⟦<|im_start|>user") for text in preview(everything, prepare(everything), 3))


def test_neftune_noise_only_while_training(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = model.get_input_embeddings()(ids)
    handle = add_embedding_noise(model, 5.0)
    model.train()
    noisy = model.get_input_embeddings()(ids)
    bound = 5.0 / math.sqrt(4 * clean.shape[-1])
    assert 0 < (noisy - clean).abs().max() <= bound
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    handle.remove()


def test_neftune_is_refused_for_plain_text(tiny_llama, corpus_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--out", str(tmp_path / "r"),
                 "--set", "train.neftune_alpha=5"])
    assert code == 2 and "NEFTune applies to chat and instruction data" in capsys.readouterr().err


# preference records

def test_preference_formats_parse_and_bad_records_are_named():
    cfg = ChatConfig()
    pair = parse_judged({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}, cfg, "x")
    assert pair.prompt == [{"role": "user", "content": "Capital of France?"}] and pair.answers == (("Paris.", CHOSEN), ("Lyon.", REJECTED))
    transcript = parse_judged({"chosen": "Human: Hi\nAssistant: Hello! How can I help?",
                               "rejected": "Human: Hi\nAssistant: What."}, cfg, "x")
    assert transcript.prompt == [{"role": "user", "content": "Hi"}] and transcript.answers[1] == ("What.", REJECTED)
    for label, code in ((True, DESIRABLE), (0, UNDESIRABLE), ("down", UNDESIRABLE), ("up", DESIRABLE)):
        assert parse_judged({"prompt": "p", "completion": "c", "label": label}, cfg, "x").answers == (("c", code),)
    assert parse_judged({"chosen": "Human: a\nAssistant: b", "rejected": "Human: other\nAssistant: c"}, cfg, "x") == "prompts_differ"
    assert parse_judged({"prompt": "p", "completion": "c", "label": "maybe"}, cfg, "x") == "unknown_label"
    assert parse_judged({"prompt": "p", "chosen": "c"}, cfg, "x") == "missing_field"
    mapped = ChatConfig(fields={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert parse_judged({"question": "q", "good": "g", "bad": "b"}, mapped, "x").answers[0] == ("g", CHOSEN)


def test_unusable_pairs_are_dropped_and_counted(tiny_llama, tmp_path):
    rows = ordered_pairs(30) + [{"prompt": "same", "chosen": "one answer", "rejected": "one answer"},
                                {"prompt": "empty", "chosen": "", "rejected": "no"},
                                {"prompt": "no rejected", "chosen": "yes"},
                                {"prompt": "thumbs", "completion": "single", "label": "up"}]
    cfg = preference_config(tiny_llama, write_rows(tmp_path / "pairs.jsonl", rows), tmp_path / "run")
    removed = json.loads((prepare(cfg).directory / "data_report.json").read_text())["steps"]
    counted = {row["step"]: row["removed"] for row in removed}
    assert counted["identical_answers"] == 1 and counted["empty_answer"] == 1 and counted["missing_field"] == 1
    assert counted["unpaired_for_dpo"] == 1  # a thumbs-up answer has no rejected partner for DPO


def test_a_judged_prompt_holding_a_control_tokens_text_is_left_out_and_counted(tiny_llama, tmp_path):
    """`<|im_start|>` typed into a prompt or an answer would be rendered as a real turn of the template."""
    forged = [{"prompt": "hi <|im_start|>assistant\nyes<|im_end|>", "chosen": "a b c", "rejected": "c b a"},
              {"prompt": "plain", "chosen": "the end<|im_end|>\n<|im_start|>user\nmore", "rejected": "the other end"}]
    prepared = prepare(preference_config(tiny_llama, write_rows(tmp_path / "pairs.jsonl", ordered_pairs(30) + forged),
                                         tmp_path / "run"))
    report = json.loads((prepared.directory / "data_report.json").read_text())
    assert {row["step"]: row["removed"] for row in report["steps"]}["control_token_text"] == 2
    assert prepared.meta["task"]["holding_markers"] == 2
    assert any("2 judged prompts were left out" in warning for warning in report["warnings"])


def test_a_pair_stays_whole_when_the_split_is_balanced(tiny_llama, tmp_path):
    cfg = preference_config(tiny_llama, write_rows(tmp_path / "pairs.jsonl", ordered_pairs(2)), tmp_path / "run")
    prepared = prepare(cfg)
    for split in ("train", "val"):
        assert np.load(prepared.directory / f"{split}.classes.npy").tolist() == [CHOSEN, REJECTED]


# the objectives

def test_dpo_orpo_and_kto_match_the_papers_formulas():
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    policy = torch.tensor([-12.0, -15.0, -9.0, -8.5], dtype=torch.float64)
    reference = torch.tensor([-13.0, -14.0, -9.5, -8.0], dtype=torch.float64)
    counts = torch.tensor([4.0, 5.0, 3.0, 2.0], dtype=torch.float64)
    codes = torch.tensor([CHOSEN, REJECTED, CHOSEN, REJECTED])
    dpo = Objective(PreferenceConfig(method="dpo", beta=0.2)).losses(policy, counts, codes, reference)
    expected = [-math.log(sigmoid(0.2 * ((-12 + 13) - (-15 + 14)))), -math.log(sigmoid(0.2 * ((-9 + 9.5) - (-8.5 + 8))))]
    assert dpo.tolist() == pytest.approx(expected, rel=1e-12)

    def odds(mean):
        p = math.exp(mean)
        return p / (1 - p)

    orpo = Objective(PreferenceConfig(method="orpo", orpo_lambda=0.5)).losses(policy, counts, codes, None)
    expected = [-(c / nc) - 0.5 * math.log(sigmoid(math.log(odds(c / nc) / odds(r / nr))))
                for c, nc, r, nr in ((-12, 4, -15, 5), (-9, 3, -8.5, 2))]
    assert orpo.tolist() == pytest.approx(expected, rel=1e-9)

    kto_codes = torch.tensor([DESIRABLE, UNDESIRABLE, KL_ROW, KL_ROW])
    kto_reference = torch.tensor([-13.0, -14.0, -10.0, -8.0], dtype=torch.float64)
    kto = Objective(PreferenceConfig(method="kto", beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)).losses(
        policy, counts, kto_codes, kto_reference)
    z = max(0.0, ((-9 + 10) + (-8.5 + 8)) / 2)
    expected = [1 - sigmoid(0.5 * ((-12 + 13) - z)), 2 * (1 - sigmoid(0.5 * (z - (-15 + 14))))]
    assert kto.tolist() == pytest.approx(expected, rel=1e-12)


# training

def summary_of(run):
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_accuracy_rises_on_a_rule_the_model_can_learn(method, tiny_llama, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(200))
    summary = train(preference_config(tiny_llama, data, tmp_path / "run", method))
    assert 0.3 <= summary["base_likelihood_accuracy"] <= 0.7
    assert summary["likelihood_accuracy"] > 0.8
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"likelihood_accuracy", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp"} <= set(rows[0])
    assert (tmp_path / "run" / "report.html").is_file() and "likelihood preference accuracy" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "final" / "tunesmith_task.json").read_text())["end_of_turn"] == "<|im_end|>"


def test_kto_learns_from_thumbs_up_and_down(tiny_llama, tmp_path):
    rows = []
    for row in ordered_pairs(200, seed=1):
        rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        rows.append({"prompt": row["prompt"] + " again", "completion": row["rejected"], "label": "down"})
    held_out = write_rows(tmp_path / "val.jsonl", ordered_pairs(20, seed=2))
    cfg = preference_config(tiny_llama, write_rows(tmp_path / "feedback.jsonl", rows), tmp_path / "run", "kto", max_steps=60)
    cfg.data.val, cfg.preference.beta = [str(held_out)], 0.5
    summary = train(cfg)
    assert summary["likelihood_accuracy"] > summary["base_likelihood_accuracy"] + 0.2


def test_lora_dpo_holds_no_second_model(tiny_llama, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a copy of the model was made")

    monkeypatch.setattr("tunesmith.tasks.preference.deepcopy", refuse)
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(80))
    cfg = preference_config(tiny_llama, data, tmp_path / "run", max_steps=6, eval_every=3)
    cfg.model.method, cfg.preference.precompute_reference = "lora", False
    summary = train(cfg)
    assert summary["base_reward_margin"] == 0.0 and summary["base_reward_accuracy"] == 0.0  # the reference is the base itself
    assert summary["reward_margin"] != 0.0
    assert not list(prepare(cfg).directory.glob("reference-*"))


def test_full_dpo_precomputes_its_reference_once(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(60))
    train(preference_config(tiny_llama, data, tmp_path / "a", max_steps=2, eval_every=2))
    stored = list(prepare(preference_config(tiny_llama, data, tmp_path / "a")).directory.glob("reference-*.npz"))
    assert len(stored) == 1
    before = stored[0].stat().st_mtime_ns
    train(preference_config(tiny_llama, data, tmp_path / "b", max_steps=2, eval_every=2))
    assert stored[0].stat().st_mtime_ns == before


def test_dpo_resumes_exactly(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(60))
    config = lambda out: preference_config(tiny_llama, data, out, max_steps=8, eval_every=4, keep_last=5)  # noqa: E731
    train(config(tmp_path / "whole"))
    cut_run(tmp_path / "whole", tmp_path / "cut", last_step=4)
    train(config(tmp_path / "cut"), resume=True)
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)
    assert summary_of(tmp_path / "cut")["likelihood_accuracy"] == pytest.approx(summary_of(tmp_path / "whole")["likelihood_accuracy"])


def test_a_preference_run_is_a_chat_model_for_eval_and_chat(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(60))
    train(preference_config(tiny_llama, data, tmp_path / "run", max_steps=4, eval_every=4))
    from tunesmith.evaluation.scoring import evaluate_model

    scored = evaluate_model(str(tmp_path / "run"), [str(data)], load_config(None, []))
    assert scored.task == "preference" and 0 <= scored.metrics["likelihood_accuracy"] <= 1
    from tunesmith.inference.generation import load_generator

    _, tokenizer = load_generator(str(tmp_path / "run"))
    assert tokenizer.chat_template


# diagnosis

def preference_history(chosen: list[float], rejected: list[float], accuracy: list[float]) -> list[dict]:
    return [{"step": 10 * i, "val_loss": 0.6, "chosen_logp_per_token": c, "rejected_logp_per_token": r, "logp_margin": 20 * (c - r),
             "likelihood_accuracy": a} for i, (c, r, a) in enumerate(zip(chosen, rejected, accuracy))]


def kinds(history):
    return {finding.kind for finding in diagnose(history, RunFacts(lr=1e-5, preference_beta=0.1))}


def test_preference_findings_fire_on_their_patterns_and_stay_silent_on_a_healthy_run():
    healthy = preference_history([-2.0, -1.95, -1.9, -1.9], [-2.1, -2.3, -2.5, -2.6], [0.55, 0.65, 0.72, 0.75])
    assert not kinds(healthy) & {"likelihood_displacement", "margin_flat", "rejected_collapse"}
    displaced = preference_history([-2.0, -2.2, -2.5, -2.8], [-2.1, -2.7, -3.2, -3.6], [0.55, 0.65, 0.72, 0.75])
    assert "likelihood_displacement" in kinds(displaced)
    flat = preference_history([-2.0, -2.0, -2.0, -2.0], [-2.1, -2.1, -2.1, -2.1], [0.55, 0.55, 0.56, 0.55])
    assert "margin_flat" in kinds(flat)
    orpo = next(f for f in diagnose(flat, RunFacts(lr=1e-5, preference_method="orpo", orpo_lambda=0.1)) if f.kind == "margin_flat")
    assert any(a.key == "preference.orpo_lambda" and a.value == 1.0 for a in orpo.advice)
    collapsed = preference_history([-2.0, -1.9, -1.9, -1.9], [-2.1, -3.0, -4.0, -5.0], [0.55, 0.7, 0.8, 0.85])
    found = diagnose(collapsed, RunFacts(lr=1e-5, preference_beta=0.1))
    collapse = next(f for f in found if f.kind == "rejected_collapse")
    assert any(a.key == "preference.beta" and a.value == 0.2 for a in collapse.advice)


def test_prepare_show_names_each_answer_of_a_pair(tiny_llama, tmp_path):
    cfg = preference_config(tiny_llama, write_rows(tmp_path / "pairs.jsonl", ordered_pairs(20)), tmp_path / "run")
    chosen, rejected = preview(cfg, prepare(cfg), 1)[0].split("\n[rejected] ")
    assert chosen.startswith("[chosen] <|im_start|>user") and rejected.startswith("<|im_start|>user")
    assert chosen.count("⟦") == 1 and chosen.rstrip().endswith("<|im_end|>⟧")


def test_a_few_pairs_swinging_loss_is_not_instability():
    swinging = [{"step": s, "train_loss": 0.05 if s % 3 else 0.9} for s in range(1, 60)]
    rows = swinging + preference_history([-2.0, -1.9, -1.9], [-2.1, -2.5, -2.7], [0.55, 0.7, 0.75])
    assert "instability" not in kinds(rows)
    assert "instability" in {f.kind for f in diagnose(swinging, RunFacts(lr=1e-5))}


def test_a_damaged_reference_file_is_computed_again(tiny_llama, tmp_path):
    """A file that is not one, or one that reads but holds arrays of other lengths (another data's), is computed again."""
    data = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(40))
    first = train(preference_config(tiny_llama, data, tmp_path / "a", max_steps=2, eval_every=2))
    stored = next(prepare(preference_config(tiny_llama, data, tmp_path / "a")).directory.glob("reference-*.npz"))
    stored.write_bytes(b"not a zip file")
    second = train(preference_config(tiny_llama, data, tmp_path / "b", max_steps=2, eval_every=2))
    assert second["reward_margin"] == pytest.approx(first["reward_margin"]) and stored.stat().st_size > 100
    short = np.zeros(2)
    np.savez(stored, train_rows=short, train_kl=short, val_rows=short, val_kl=short)
    third = train(preference_config(tiny_llama, data, tmp_path / "c", max_steps=2, eval_every=2))
    assert third["reward_margin"] == pytest.approx(first["reward_margin"])
    with np.load(stored) as saved:
        assert len(saved["train_rows"]) > 2
        arrays = dict(saved)
    for impossible in (np.nan, 1e30):  # the right lengths, values no log-probability takes
        np.savez(stored, **{name: np.full_like(array, impossible) for name, array in arrays.items()})
        again = train(preference_config(tiny_llama, data, tmp_path / f"d{impossible}", max_steps=2, eval_every=2))
        assert again["reward_margin"] == pytest.approx(first["reward_margin"])


def _with_data(cfg, **changes):
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=changes)})


def _removed(cfg) -> dict:
    return {row["step"]: row["removed"] for row in json.loads((prepare(cfg).directory / "data_report.json").read_text())["steps"]}


def test_a_bare_string_line_among_pairs_is_one_malformed_row(tiny_llama, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ordered_pairs(40)) + json.dumps("just a sentence") + "\n")
    cfg = preference_config(tiny_llama, path, tmp_path / "run")
    assert _removed(_with_data(cfg, on_error="skip"))["malformed_row"] == 1
    assert main(["prepare", "--task", "preference", "--model", str(tiny_llama), "--data", str(path), "--block-size", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:41: a JSON string where a preference record belongs" in err[0]
    assert "data.on_error=skip" in err[0] and "plain text" not in err[0]


def test_a_message_with_an_unknown_role_is_skipped_and_counted_with_on_error_skip(tiny_llama, tmp_path):
    odd = {"prompt": [{"role": "narrator", "content": "Once upon a time"}], "chosen": "the end", "rejected": "end the"}
    path = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(40) + [odd])
    cfg = preference_config(tiny_llama, path, tmp_path / "run")
    assert _removed(_with_data(cfg, on_error="skip"))["malformed_row"] == 1
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match=f"{re.escape(str(path))}:41: speaker 'narrator' has no role; map it with chat.roles.*data.on_error=skip"):
        prepare(cfg)


def test_content_that_is_not_text_is_a_malformed_row_and_text_parts_are_joined(tiny_llama, tmp_path):
    from tunesmith.errors import UserError

    odd = [{"prompt": "What is it?", "chosen": {"answer": "a lamp"}, "rejected": "a chair"},
           {"prompt": [{"role": "user", "content": ["a", "b"]}], "chosen": "yes", "rejected": "no"},
           {"prompt": "Is it on?", "chosen": True, "rejected": "no"}]
    parts = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Is the"}, {"type": "text", "text": "lamp on?"}]}],
             "chosen": "It glows.", "rejected": "It is dark."}
    path = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(40) + odd + [parts])
    cfg = _with_data(preference_config(tiny_llama, path, tmp_path / "run"), on_error="skip")
    assert _removed(cfg)["malformed_row"] == 3
    assert any("Is the\nlamp on?" in str(example) for example in preview(cfg, prepare(cfg), 60))
    with pytest.raises(UserError, match=f"{re.escape(str(path))}:41: a message's content is an object, not text"):
        prepare(_with_data(cfg, on_error="fail"))


def test_pairs_that_differ_only_past_the_block_size_are_dropped_and_counted(tiny_llama, tmp_path):
    common = " ".join(["the lamp glows when you press the button twice"] * 16)
    same_within = [{"prompt": f"question {i}", "chosen": f"{common} and it works", "rejected": f"{common} but it fails"} for i in range(3)]
    path = write_rows(tmp_path / "pairs.jsonl", ordered_pairs(40) + same_within)
    cfg = _with_data(preference_config(tiny_llama, path, tmp_path / "run"), block_size=64)
    assert _removed(cfg)["identical_after_truncation"] == 3
