"""What a diagnosis says: findings with their evidence and advice, and the facts about a run that checks need."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Advice:
    key: str  # a config key, or "" for advice outside the config
    value: object
    why: str


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str  # "info", "warning" or "error"
    message: str
    evidence: dict
    advice: list[Advice] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunFacts:
    """What diagnosis needs to know besides the metric history."""

    steps_per_epoch: float | None = None
    train_tokens: int | None = None
    trainable_parameters: int | None = None
    method: str = "full"
    lr: float | None = None
    dropout: float | None = None
    weight_decay: float | None = None
    skipped_steps: int = 0
    base_val_loss: float | None = None
    best_val_loss: float | None = None
    val_tokens: int | None = None
    val_loss_std: float | None = None
    micro_batch_size: int | None = None
    grad_accum: int | None = None  # micro-batches per step: a larger micro-batch keeps the batch only up to their product
    memory_before_training_mb: float | None = None
    device_memory_mb: float | None = None
    preference_beta: float | None = None  # the preference settings, which the preference findings advise on
    preference_method: str | None = None
    orpo_lambda: float | None = None
    replay: float = 0.0
    max_drift: float | None = None  # monitor.max_drift: evaluations over it cannot be the model kept
    drift_from: str = "the base model"  # what the drift is counted from: monitor.drift_from's model, or the run's start
    grpo_beta: float | None = None  # the GRPO settings, which its findings advise on
    grpo_temperature: float | None = None
    grpo_group_size: int | None = None
    grpo_target_kl: float | None = None
    distill_hidden: float | None = None  # the distillation settings, which its finding advises on
    distill_keep: int | None = None  # blocks a student made from its teacher keeps (as a count)
    student_writes_text: bool = True  # a distilled language model, not a classifier: the advice differs


FORGETTING_NATS = 0.2  # drift from the base model, in nats per token, that counts as forgetting (see benchmarks/RESULTS.md)


def figure(value) -> float | int | None:
    """A figure from a run's files, or None where a hand edit left something else (text, a list, true)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def round3(value: float) -> float:
    """Three significant digits: advice reads 0.009, not 0.009000000000000001."""
    return float(f"{value:.3g}")


def method_advice(name: str | None, finding: str) -> list[Advice]:
    """What the run's training method adds to a finding's advice; nothing for a run whose method is not recorded."""
    from ..methods import METHODS

    method = METHODS.get(name or "")
    return [Advice(*item) for item in method.advice.get(finding, ())] if method else []


def drift_origin(record) -> str:
    """What a run's drift is counted from, given its monitor settings or its summary's forgetting record: monitor.drift_from's
    model, or the model the run started from."""
    origin = record.get("drift_from") if isinstance(record, dict) else None
    return origin if isinstance(origin, str) else "the base model"
