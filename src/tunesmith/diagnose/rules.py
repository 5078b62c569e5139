"""Diagnosis: pure functions from a run's metric history and facts to findings, each with its numbers and advice.

Nothing here reads files or talks to the loop: `diagnose_run` loads a run directory (finished or
crashed) and calls `diagnose`, and the loop may call `diagnose` on its history at any point.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median

from ..errors import UserError
from ..measures import perplexity, perplexity_ratio
from ..rundir.folder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, config_section, read_json_object, read_metric_rows, read_yaml_object
from .benchmarks import benchmark_regression, forgetting_advice
from .findings import FORGETTING_NATS, Advice, Finding, RunFacts, drift_origin, figure, method_advice, round3
from .distill import distill_facts, gap_stalled
from .grpo import grpo_rows, kl_blowup, no_signal, reward_hacking
from .preference import likelihood_displacement, margin_flat, preference_rows, rejected_collapse

OVERFIT_EVALS = 2  # evaluations after the best that must all be worse
OVERFIT_RISE = 0.01  # relative rise of validation loss over its best that counts
FLAT_CHANGE = 0.02  # relative change of the training loss under which it "hardly moves"
LOW_LR = 1e-5
SPIKE_FACTOR = 2.0
SPIKE_MIN_NATS = 0.5  # and this far above: near-zero losses (a classifier's) double by noise alone
TOKENS_PER_PARAMETER = 0.01


def _evaluations(history: list[dict]) -> list[tuple[int, float]]:
    return [(row["step"], row["val_loss"]) for row in history if "val_loss" in row and math.isfinite(row["val_loss"])]


def pair_rows(history: list[dict]) -> list[dict]:
    """A reward model's evaluations: its loss is a Bradley-Terry pair loss, not a perplexity's."""
    return [row for row in history if "pairwise_accuracy" in row]


def _train_losses(history: list[dict]) -> list[tuple[int, float]]:
    """The training losses that measure fit; none for GRPO, whose loss is centred on zero by its advantages."""
    if grpo_rows(history):
        return []
    return [(row["step"], row["train_loss"]) for row in history if "train_loss" in row and math.isfinite(row["train_loss"])]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _window_means(losses: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last tenth of a loss series (at least 3 values each)."""
    width = max(3, len(losses) // 10)
    return _mean(losses[:width]), _mean(losses[-width:])


def overfitting(history: list[dict], facts: RunFacts) -> Finding | None:
    evals = _evaluations(history)
    if len(evals) < OVERFIT_EVALS + 2:
        return None
    best_index = min(range(len(evals)), key=lambda i: evals[i][1])
    after = evals[best_index + 1 :]
    best_step, best = evals[best_index]
    if len(after) < OVERFIT_EVALS or not all(loss > best * (1 + OVERFIT_RISE) for _, loss in after[-OVERFIT_EVALS:]):
        return None
    train = _train_losses(history)
    before_best = [loss for step, loss in train if step <= best_step]
    since_best = [loss for step, loss in train if step > best_step]
    if not before_best or not since_best or _mean(since_best) >= _mean(before_best[-len(since_best):]):
        return None  # the training loss did not keep falling: this is not memorization
    last_step, last = after[-1]
    advice = []
    if facts.steps_per_epoch:
        advice.append(Advice("train.epochs", round(best_step / facts.steps_per_epoch, 2), "stop where validation loss was lowest"))
    advice.append(Advice("model.dropout", round(min(0.5, (facts.dropout or 0.0) + 0.1), 2), "more dropout regularizes"))
    advice.append(Advice("train.weight_decay", max(0.1, (facts.weight_decay or 0.0) * 2), "stronger weight decay"))
    advice += method_advice(facts.method, "overfitting")
    advice.append(Advice("", None, "more training data"))
    return Finding(
        "overfitting", "warning",
        f"validation loss rose from {best:.4f} at step {best_step} to {last:.4f} at step {last_step} "
        f"(+{last / best - 1:.1%}) while the training loss kept falling: the model is memorizing the training data",
        {"best_step": best_step, "best_val_loss": best, "last_step": last_step, "last_val_loss": last,
         "train_loss_before_best": _mean(before_best[-len(since_best):]), "train_loss_since_best": _mean(since_best)},
        advice,
    )


def _flat(history: list[dict]) -> tuple[float, float, float] | None:
    losses = [loss for _, loss in _train_losses(history)]
    if len(losses) < 20:
        return None
    first, last = _window_means(losses)
    return first, last, (first - last) / first


def learning_rate_too_low(history: list[dict], facts: RunFacts) -> Finding | None:
    flat = _flat(history)
    if flat is None or flat[2] >= FLAT_CHANGE or facts.lr is None or facts.lr >= LOW_LR:
        return None
    first, last, change = flat
    return Finding("lr_too_low", "warning",
                   f"the training loss hardly moved ({first:.4f} -> {last:.4f}, {change:.1%}) at a learning rate of {facts.lr:.2g}",
                   {"first_loss": first, "last_loss": last, "relative_change": change, "lr": facts.lr},
                   [Advice("train.lr", round3(facts.lr * 10), "ten times the learning rate")])


def underfitting(history: list[dict], facts: RunFacts) -> Finding | None:
    flat = _flat(history)
    if flat is None or flat[2] >= FLAT_CHANGE or (facts.lr is not None and facts.lr < LOW_LR):
        return None
    evals = _evaluations(history)
    val_change = (evals[0][1] - min(loss for _, loss in evals)) / evals[0][1] if evals else 0.0
    if val_change >= FLAT_CHANGE:
        return None
    first, last, change = flat
    advice = [Advice("train.lr", round3((facts.lr or 5e-5) * 3), "a higher learning rate"),
              Advice("train.epochs", None, "more steps: raise train.epochs or train.max_steps")]
    advice += method_advice(facts.method, "underfitting")
    advice.append(Advice("model.name", None, "a bigger model"))
    return Finding("underfitting", "warning",
                   f"training ({first:.4f} -> {last:.4f}) and validation losses are both flat: the model is not learning the data",
                   {"first_loss": first, "last_loss": last, "relative_change": change, "val_relative_change": val_change}, advice)


def instability(history: list[dict], facts: RunFacts) -> Finding | None:
    losses = _train_losses(history)
    spikes = []
    if preference_rows(history) or pair_rows(history):
        losses = []  # a few pairs' preference or Bradley-Terry loss swings between 0 and 1 by design: only non-finite steps count
    for index in range(5, len(losses)):
        recent = median(loss for _, loss in losses[index - 5 : index])
        if losses[index][1] > SPIKE_FACTOR * recent and losses[index][1] - recent > SPIKE_MIN_NATS:
            spikes.append({"step": losses[index][0], "loss": losses[index][1], "recent_median": recent})
    skipped = facts.skipped_steps or sum(1 for row in history if row.get("skipped"))
    if not spikes and not skipped:
        return None
    advice = [Advice("train.lr", round3((facts.lr or 5e-5) / 3), "a lower learning rate"),
              Advice("train.warmup_steps", None, "a longer warmup"),
              Advice("train.grad_clip", 1.0, "clip the gradient norm")]
    return Finding("instability", "error" if skipped else "warning",
                   f"{_count(len(spikes), 'loss spike')} above {SPIKE_FACTOR:g}x the recent median and "
                   f"{_count(skipped, 'non-finite step')}",
                   {"spikes": spikes[:5], "spike_count": len(spikes), "non_finite_steps": skipped}, advice)


def too_little_data(history: list[dict], facts: RunFacts) -> Finding | None:
    if not facts.train_tokens or not facts.trainable_parameters:
        return None
    ratio = facts.train_tokens / facts.trainable_parameters
    if ratio >= TOKENS_PER_PARAMETER:
        return None
    advice = method_advice(facts.method, "too_little_data")
    return Finding("too_little_data", "info",
                   f"{facts.train_tokens:,} training tokens for {facts.trainable_parameters:,} trainable parameters "
                   f"({ratio:.2g} tokens per parameter): expect memorization within a few epochs",
                   {"train_tokens": facts.train_tokens, "trainable_parameters": facts.trainable_parameters, "tokens_per_parameter": ratio},
                   advice + [Advice("", None, "more training data")])


VAL_RELATIVE_ERROR = 0.02  # a perplexity uncertain by more than about 2% is not a trustworthy comparison
MEMORY_HIGH, MEMORY_TARGET = 0.9, 0.85


def validation_too_small(history: list[dict], facts: RunFacts) -> Finding | None:
    if not facts.val_tokens or facts.val_loss_std is None or not math.isfinite(facts.val_loss_std):
        return None
    error = facts.val_loss_std / math.sqrt(facts.val_tokens)  # in nats: the relative error of the perplexity
    if error < VAL_RELATIVE_ERROR:
        return None
    needed = int((facts.val_loss_std / VAL_RELATIVE_ERROR) ** 2)
    return Finding("validation_too_small", "warning",
                   f"the validation split has {facts.val_tokens:,} tokens: its perplexity is uncertain by at least "
                   f"±{error:.1%}, too much to compare runs; about {needed:,} tokens would bring that under ±{VAL_RELATIVE_ERROR:.0%}",
                   {"val_tokens": facts.val_tokens, "loss_std": facts.val_loss_std, "relative_error": error, "tokens_needed": needed},
                   [Advice("data.val_fraction", None, "a larger share of the documents for validation"),
                    Advice("data.val", None, "or a separate, larger validation file")])


def memory(history: list[dict], facts: RunFacts) -> Finding | None:
    """Peak memory against the device's, and how large a micro-batch would fit: 'reduce the batch size', made specific."""
    peaks = [row.get("cuda_max_allocated_mb") or row.get("rss_mb") for row in history]
    peaks = [p for p in peaks if isinstance(p, (int, float)) and math.isfinite(p) and p > 0]
    figures = (facts.device_memory_mb, facts.micro_batch_size, facts.memory_before_training_mb)
    if not peaks or not all(isinstance(f, (int, float)) and math.isfinite(f) for f in figures) or not figures[0] or not figures[1]:
        return None  # a figure missing, or damaged in the run's files, says nothing about memory
    peak, total, micro, base = max(peaks), facts.device_memory_mb, facts.micro_batch_size, facts.memory_before_training_mb
    per_sequence = max(peak - base, 1.0) / micro
    fits = int((MEMORY_TARGET * total - base) // per_sequence)
    evidence = {"peak_mb": peak, "device_mb": total, "before_training_mb": base, "per_sequence_mb": per_sequence,
                "micro_batch_size": micro, "micro_batch_that_fits": fits}
    if peak > MEMORY_HIGH * total:
        return Finding("memory", "warning", f"peak memory {peak:,.0f} MB is {peak / total:.0%} of the device's {total:,.0f} MB: "
                       "close to running out", evidence,
                       [Advice("train.micro_batch_size", max(1, fits), "a micro-batch that leaves headroom (raise train.grad_accum to keep the batch)"),
                        Advice("model.gradient_checkpointing", True, "recompute activations instead of storing them")])
    batch = micro * facts.grad_accum if isinstance(facts.grad_accum, int) and facts.grad_accum > 0 else None
    larger = min(fits, batch) if batch else fits  # past the batch, a larger micro-batch would change what a step learns from
    if larger >= 2 * micro:
        return Finding("memory", "info", f"peak memory {peak:,.0f} MB of {total:,.0f} MB: a micro-batch of about {larger} would fit "
                       f"(now {micro}), for more tokens per second", evidence,
                       [Advice("train.micro_batch_size", larger, "use the memory that is there (lower train.grad_accum to keep the batch)")])
    return None


def transfer_gain(history: list[dict], facts: RunFacts) -> Finding | None:
    evals = _evaluations(history)
    if preference_rows(history) or grpo_rows(history) or pair_rows(history):
        return None  # a preference loss is not a perplexity's, and GRPO has none: their gains are their own metrics
    base = facts.base_val_loss if facts.base_val_loss is not None else (evals[0][1] if evals else None)
    best = facts.best_val_loss if facts.best_val_loss is not None else _best_within_budget(history, facts.max_drift)
    if base is None or best is None:
        return None
    base_ppl, best_ppl = perplexity(base), perplexity(best)
    return Finding("transfer_gain", "info",
                   f"validation perplexity {base_ppl:.2f} (base) -> {best_ppl:.2f} (best), {best_ppl / base_ppl - 1:+.1%}",
                   {"base_val_ppl": base_ppl, "best_val_ppl": best_ppl, "relative_change": best_ppl / base_ppl - 1})


def _best_within_budget(history: list[dict], max_drift: float | None) -> float | None:
    """The lowest validation loss a run without its summary (still running, or killed) could keep: the base's, or one at
    an evaluation within monitor.max_drift."""
    rows = [row for row in history if "val_loss" in row and math.isfinite(row["val_loss"])]
    kept = [row["val_loss"] for row in rows[:1] + [row for row in rows[1:] if within_budget(row, max_drift)]]
    return min(kept) if kept else None


def within_budget(row: dict, max_drift: float | None) -> bool:
    """Whether an evaluation may be the model kept under monitor.max_drift: a NaN drift is over it, as in training; a
    row without a drift (no probe) is not."""
    drift = row.get("drift_nats")
    return max_drift is None or not isinstance(drift, (int, float)) or drift <= max_drift


def forgetting(history: list[dict], facts: RunFacts) -> Finding | None:
    """The model kept (the best step so far) has moved far from the base model's own text: general ability is being lost."""
    rows = [row for row in history if math.isfinite(row.get("drift_nats", math.nan)) and ("val_loss" in row or "val_reward" in row)]
    if len(rows) < 2:
        return None
    candidates = [row for row in rows[1:] if within_budget(row, facts.max_drift)]
    # every evaluation over monitor.max_drift: the model kept is the start, drifted only when counted from monitor.drift_from
    kept = min(candidates, key=lambda row: row["val_loss"] if "val_loss" in row else -row["val_reward"]) if candidates else rows[0]
    drift = kept["drift_nats"]
    if drift < FORGETTING_NATS:
        return None
    general = ""
    if "general_ppl" in kept and "general_ppl" in rows[0]:
        general = f"; on your general text the perplexity went {rows[0]['general_ppl']:.2f} -> {kept['general_ppl']:.2f}"
    advice = forgetting_advice(facts)
    return Finding("forgetting", "warning",
                   f"at step {kept['step']} (the best so far) the model needs {drift:.3f} more nats per token than {facts.drift_from} on "
                   f"its own text (its perplexity there x{perplexity_ratio(drift):.2f}){general}: it is losing general language "
                   "while it learns the domain", {"step": kept["step"], "drift_nats": drift, "threshold_nats": FORGETTING_NATS,
                                                   "general_ppl_base": rows[0].get("general_ppl"), "general_ppl": kept.get("general_ppl")},
                   advice)


CHECKS = (overfitting, underfitting, learning_rate_too_low, instability, too_little_data, validation_too_small, memory, transfer_gain,
          likelihood_displacement, margin_flat, rejected_collapse, forgetting, benchmark_regression, reward_hacking, no_signal,
          kl_blowup, gap_stalled)


def diagnose(history: list[dict], facts: RunFacts) -> list[Finding]:
    return [finding for check in CHECKS if (finding := check(history, facts)) is not None]


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _positive(value) -> bool:
    return figure(value) is not None and value > 0


def run_facts(run_dir: Path) -> RunFacts:
    """Facts from what a run directory holds, whether or not it finished."""
    config = read_yaml_object(run_dir / CONFIG_FILE)
    summary = read_json_object(run_dir / SUMMARY_FILE)
    train_cfg, model_cfg = config_section(config, "train"), config_section(config, "model")
    preference, grpo = config_section(config, "preference"), config_section(config, "grpo")
    steps, epochs = summary.get("steps"), summary.get("epochs")
    return RunFacts(
        steps_per_epoch=steps / epochs if _positive(steps) and _positive(epochs) else None,
        train_tokens=figure(summary.get("train_tokens")),
        trainable_parameters=figure(summary.get("trainable_parameters")),
        method=model_cfg.get("method") if isinstance(model_cfg.get("method"), str) else "full",
        lr=figure(train_cfg.get("lr")),
        dropout=figure(model_cfg.get("dropout")),
        weight_decay=figure(train_cfg.get("weight_decay")),
        skipped_steps=figure(summary.get("skipped_steps")) or 0,
        base_val_loss=figure(summary.get("base_val_loss")),
        best_val_loss=figure(summary.get("best_val_loss")),
        val_tokens=figure(summary.get("val_tokens")),
        val_loss_std=figure(summary.get("val_loss_std")),
        micro_batch_size=figure(summary.get("micro_batch_size")),
        grad_accum=figure(train_cfg.get("grad_accum")),
        memory_before_training_mb=figure(summary.get("memory_before_training_mb")),
        device_memory_mb=figure(summary.get("device_memory_mb")),
        preference_beta=figure(preference.get("beta")),
        preference_method=preference.get("method"),
        orpo_lambda=figure(preference.get("orpo_lambda")),
        replay=figure(config_section(config, "data").get("replay")) or 0.0,
        max_drift=figure(config_section(config, "monitor").get("max_drift")),
        drift_from=drift_origin(config_section(config, "monitor")),
        grpo_beta=figure(grpo.get("beta")),
        grpo_temperature=figure(grpo.get("temperature")),
        grpo_group_size=figure(grpo.get("group_size")),
        grpo_target_kl=figure(grpo.get("target_kl")),
        **distill_facts(config_section(config, "distill"), config.get("task")),
    )


def diagnose_run(run_dir: Path) -> list[Finding]:
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; is it a tunesmith run directory?")
    history = read_metric_rows(metrics)  # a line torn by a killed run is left out
    return diagnose(history, run_facts(run_dir))
