"""The findings of preference runs: likelihood displacement, a flat margin, a collapse of the rejected answers.

Pure functions from the metric history and the run's facts, as in `diagnose`, which runs them with the others.
"""

from __future__ import annotations

import math

from .findings import Advice, Finding, RunFacts, round3

DISPLACEMENT_NATS = 0.1  # fall of the chosen answers' per-token log-prob that counts as displacement
FLAT_MARGIN_NATS = 0.5  # rise of the chosen-over-rejected log-prob margin (per pair) under which it "hardly moves"
FLAT_ACCURACY = 0.02
COLLAPSE_NATS = 1.0  # fall of the rejected answers' per-token log-prob that counts as a collapse


def preference_rows(history: list[dict]) -> list[dict]:
    return [row for row in history if "chosen_logp_per_token" in row and math.isfinite(row["chosen_logp_per_token"])]


def likelihood_displacement(history: list[dict], facts: RunFacts) -> Finding | None:
    """DPO's known failure: the margin grows because both answers become unlikely, the chosen ones too."""
    rows = preference_rows(history)
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    fall = first["chosen_logp_per_token"] - last["chosen_logp_per_token"]
    grew = last["logp_margin"] - first["logp_margin"]
    if fall < DISPLACEMENT_NATS or grew <= 0:
        return None
    return Finding("likelihood_displacement", "warning",
                   f"the chosen answers' log-prob fell from {first['chosen_logp_per_token']:.3f} to {last['chosen_logp_per_token']:.3f} "
                   f"per token (step {first['step']} -> {last['step']}) while their margin over the rejected grew by {grew:.2f} nats: "
                   "the model prefers the chosen answers by making both less likely, and may write worse ones",
                   {"chosen_logp_per_token_first": first["chosen_logp_per_token"], "chosen_logp_per_token_last": last["chosen_logp_per_token"],
                    "logp_margin_first": first["logp_margin"], "logp_margin_last": last["logp_margin"]},
                   [Advice("preference.method", "orpo", "its loss on the chosen answers keeps them likely"),
                    Advice("train.lr", round3((facts.lr or 5e-5) / 3), "a lower learning rate moves the answers less"),
                    Advice("train.epochs", None, "fewer epochs: stop near the best step")])


def margin_flat(history: list[dict], facts: RunFacts) -> Finding | None:
    rows = preference_rows(history)
    if len(rows) < 2:
        return None
    first = rows[0]
    grew = max(row["logp_margin"] for row in rows[1:]) - first["logp_margin"]
    gained = max(row["likelihood_accuracy"] for row in rows[1:]) - first["likelihood_accuracy"]
    if grew >= FLAT_MARGIN_NATS or gained >= FLAT_ACCURACY:
        return None
    if facts.preference_method == "orpo":
        stronger = Advice("preference.orpo_lambda", round3((facts.orpo_lambda or 0.1) * 10),
                          "a larger weight on the odds ratio: the loss on the chosen answers alone makes both kinds likelier")
    else:
        stronger = Advice("preference.beta", round3((facts.preference_beta or 0.1) * 2), "a larger beta: the DPO and KTO gradients scale with it")
    return Finding("margin_flat", "warning",
                   f"the chosen-over-rejected margin hardly moved over {len(rows)} evaluations ({grew:+.2f} nats at most, "
                   f"preference accuracy {gained:+.1%}): the model is not learning the preferences",
                   {"logp_margin_first": first["logp_margin"], "logp_margin_gain": grew, "accuracy_gain": gained},
                   [Advice("train.lr", round3((facts.lr or 5e-5) * 3), "a higher learning rate"), stronger,
                    Advice("", None, "check that the chosen and rejected answers really differ in what you want learned")])


def rejected_collapse(history: list[dict], facts: RunFacts) -> Finding | None:
    rows = [row for row in preference_rows(history) if math.isfinite(row.get("rejected_logp_per_token", math.nan))]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    fall = first["rejected_logp_per_token"] - last["rejected_logp_per_token"]
    if fall < COLLAPSE_NATS:
        return None
    return Finding("rejected_collapse", "warning",
                   f"the rejected answers' log-prob collapsed from {first['rejected_logp_per_token']:.2f} to "
                   f"{last['rejected_logp_per_token']:.2f} per token: the model is driven far from its reference, "
                   "which tends to degrade its other answers too",
                   {"rejected_logp_per_token_first": first["rejected_logp_per_token"], "rejected_logp_per_token_last": last["rejected_logp_per_token"]},
                   [Advice("preference.beta", round3((facts.preference_beta or 0.1) * 2), "a larger beta keeps the model closer to the reference"),
                    Advice("train.lr", round3((facts.lr or 5e-5) / 3), "a lower learning rate"),
                    Advice("train.epochs", None, "fewer epochs: the best step is earlier")])
