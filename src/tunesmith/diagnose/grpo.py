"""The findings of GRPO runs: reward hacking, groups that give no learning signal, a KL that runs away.

Pure functions from the metric history and the run's facts, as in `diagnose`, which runs them with the others.
GRPO's training loss says nothing of progress (its advantages are centred on zero), so the loss-based findings
leave GRPO runs alone (`grpo_rows`) and these read the rewards, the KL and the held-out completions instead.
"""

from __future__ import annotations

import math

from .findings import Advice, Finding, RunFacts, round3

KL_LIMIT = 1.0  # nats per completion token from the reference: far past the 0.01-0.1 of a run that stays close to it
TARGET_KL_ADVICE = 0.25  # nats per token: Ziegler et al.'s 6 nats over their 24-token completions
DRIFT_LIMIT = 1.0  # nats per token of the forgetting probe
COLLAPSE = 0.5  # distinct-2 or completion length below this share of the base model's
NO_SIGNAL_SHARE = 0.5  # groups whose completions all got the same reward, over the recent steps
RECENT = 10  # training steps the KL and the equal-group share are averaged over


def grpo_rows(history: list[dict]) -> list[dict]:
    return [row for row in history if "equal_groups" in row and math.isfinite(row["equal_groups"])]


def _evaluations(history: list[dict]) -> list[dict]:
    return [row for row in history if math.isfinite(row.get("val_reward", math.nan))]


def _recent(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows[-RECENT:] if math.isfinite(row.get(key, math.nan))]
    return sum(values) / len(values) if values else None


def _collapsed(base: dict, last: dict, key: str) -> bool:
    return base.get(key, 0) > 0 and math.isfinite(last.get(key, math.nan)) and last[key] < COLLAPSE * base[key]


def reward_hacking(history: list[dict], facts: RunFacts) -> Finding | None:
    """The reward rises while the model runs away from the base or its completions collapse: it games the reward."""
    evals = _evaluations(history)
    if len(evals) < 2 or evals[-1]["val_reward"] <= evals[0]["val_reward"]:
        return None
    base, last = evals[0], evals[-1]
    kl = _recent(grpo_rows(history), "kl")
    signs = []
    if kl is not None and kl > KL_LIMIT:
        signs.append(f"KL to the base {kl:.2f} nats per token")
    drift = last.get("drift_nats", math.nan) - base.get("drift_nats", 0.0)  # this run's own (monitor.drift_from counts earlier runs')
    if math.isfinite(drift) and drift > DRIFT_LIMIT:
        signs.append(f"drift {drift:.2f} nats per token from where it started")
    if _collapsed(base, last, "val_distinct_2"):
        signs.append(f"distinct-2 {base['val_distinct_2']:.3f} -> {last['val_distinct_2']:.3f} (the completions repeat each other)")
    if _collapsed(base, last, "val_completion_length"):
        signs.append(f"completions {base['val_completion_length']:.1f} -> {last['val_completion_length']:.1f} tokens long")
    if not signs:
        return None
    return Finding("reward_hacking", "warning",
                   f"the held-out reward rose {base['val_reward']:.3f} -> {last['val_reward']:.3f} (step {last['step']}) while "
                   + "; ".join(signs) + ": the model may be gaming the reward rather than doing what it stands for; read the samples",
                   {"base_reward": base["val_reward"], "reward": last["val_reward"], "kl": kl, "drift_nats": last.get("drift_nats"),
                    "base_distinct_2": base.get("val_distinct_2"), "distinct_2": last.get("val_distinct_2"),
                    "base_completion_length": base.get("val_completion_length"), "completion_length": last.get("val_completion_length")},
                   [Advice("grpo.beta", round3(max(0.04, 2 * (facts.grpo_beta or 0.0))), "a stronger pull toward the base model"),
                    _target_kl_advice(facts, kl),
                    Advice("train.lr", round3((facts.lr or 1e-5) / 3), "smaller steps"),
                    Advice("grpo.rewards", None, "add a reward for what the hack breaks (a length target, words to avoid), "
                           "or stop at an earlier step: best/ keeps the best evaluation")])


def _target_kl_advice(facts: RunFacts, kl: float | None) -> Advice:
    """A KL target that holds the policy nearer the base: half the one the run had, or, without one, half the KL it reached
    (at most Ziegler et al.'s 0.25 nats per token)."""
    if facts.grpo_target_kl:
        return Advice("grpo.target_kl", round3(facts.grpo_target_kl / 2), "a lower KL target")
    return Advice("grpo.target_kl", round3(min(TARGET_KL_ADVICE, (kl or 2 * TARGET_KL_ADVICE) / 2)), "a penalty that rises whenever the KL passes this")


def no_signal(history: list[dict], facts: RunFacts) -> Finding | None:
    """Most groups' completions got the same reward: their advantages are zero and nothing is learned from them."""
    rows = grpo_rows(history)
    share = _recent(rows, "equal_groups")
    if len(rows) < 3 or share is None or share < NO_SIGNAL_SHARE:
        return None
    temperature, group = facts.grpo_temperature or 1.0, facts.grpo_group_size or 8
    return Finding("no_signal", "warning",
                   f"{share:.0%} of the last {min(RECENT, len(rows))} steps' groups gave every completion the same reward: "
                   "their advantages are zero, so those prompts teach nothing",
                   {"equal_group_share": share, "steps": min(RECENT, len(rows)), "reward": rows[-1].get("reward")},
                   [Advice("grpo.temperature", round3(min(5.0, temperature + 0.3)), "more varied completions"),
                    Advice("grpo.group_size", 2 * group, "more completions per prompt, so some differ"),
                    Advice("grpo.rewards", None, "a reward that grades (a probability, a length target) rather than passes or fails, "
                           "or easier prompts")])


def kl_blowup(history: list[dict], facts: RunFacts) -> Finding | None:
    """The policy runs away from the reference without the reward to show for it."""
    rows = grpo_rows(history)
    kl = _recent(rows, "kl")
    if kl is None or kl <= KL_LIMIT:
        return None
    evals = _evaluations(history)
    if len(evals) >= 2 and evals[-1]["val_reward"] > evals[0]["val_reward"]:
        return None  # with the reward rising, this is reward_hacking's to report
    return Finding("kl_blowup", "warning",
                   f"the KL to the base model is {kl:.2f} nats per completion token over the last {min(RECENT, len(rows))} steps, "
                   "without the held-out reward rising: the updates are too large",
                   {"kl": kl, "limit": KL_LIMIT, "steps": min(RECENT, len(rows))},
                   [Advice("train.lr", round3((facts.lr or 1e-5) / 3), "smaller steps"),
                    Advice("grpo.beta", round3(max(0.04, 2 * (facts.grpo_beta or 0.0))), "a stronger KL penalty"),
                    _target_kl_advice(facts, kl),
                    Advice("grpo.iterations", 1, "one update per batch of completions")])
