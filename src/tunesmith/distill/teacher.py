"""The teacher: a frozen model that shares the student's tokenizer (and, for a classifier, its labels), whose
distributions the student learns; measured once on the validation set so that the student's gap can be reported."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig
from ..errors import UserError
from ..models import ResolvedModel, context_length, load_model, load_model_config, resolve_model
from ..models.weights import scores_with_head
from ..rundir.fingerprint import folder_identity
from ..runtime import low_precision_dtype
from ..tasks import read_task, task_kind
from ..tasks.loss import forward
from .student import read_record


@dataclass
class Teacher:
    spec: str
    resolved: ResolvedModel
    model: torch.nn.Module  # frozen, in evaluation mode
    module: torch.nn.Module  # what reads a training batch: the model, or the task's wrapper of it (packed classes)
    parameters: int

    @torch.no_grad()
    def logits(self, batch) -> torch.Tensor:
        return forward(self.module, batch)

    @property
    def identity(self) -> list:
        """What the teacher's measurements and cache are keyed by: a local teacher's files; one from the hub, which has no
        folder of its own here, by the commit its files in the local cache came from."""
        files = folder_identity(Path(self.resolved.path))
        return [self.resolved.path, files] if files else [self.resolved.path, files, hub_commit(self.resolved.path)]


def hub_commit(repo_id: str) -> str | None:
    """The commit of a hub model's files in the local Hugging Face cache (its snapshot folder's name), if there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a repository id (huggingface_hub validates it)
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def resolve_teacher(spec: str, trust_remote_code: bool = False, log=print) -> ResolvedModel:
    """The teacher's files: a finished run's final/, a model directory, a .gguf file or a hub id; refused in one line
    naming distill.teacher (a run that has not finished, with how to finish it)."""
    return resolve_named_model("distill.teacher", spec, trust_remote_code, log, "name its teacher another way",
                               "a finished tunesmith run, a model directory, a .gguf file or a hub id that shares the student's tokenizer")


def resolve_named_model(key: str, spec: str, trust_remote_code: bool, log, unfinished: str, alternatives: str) -> ResolvedModel:
    """The files of a model a setting other than model.name names, refused in one line naming the setting: a run that has
    not finished (with how to finish it, or `unfinished`), or anything `resolve_model` does not find (give `alternatives`)."""
    local = Path(os.path.expanduser(spec))
    if local.is_dir() and (local / "checkpoints").is_dir() and not (local / "final" / "config.json").is_file():
        raise UserError(f"{key} {spec}: this run has not finished (no final/ model yet); finish it with "
                        f"`tunesmith train --out {shlex.quote(spec)} --resume`, or {unfinished}")
    try:
        return resolve_model(spec, trust_remote_code, log=log)
    except UserError as exc:
        reason = str(exc).removeprefix(f"model {spec}: ").split("; use ")[0]
        raise UserError(f"{key} {spec}: {reason}; give {alternatives}") from None


def language_source(cfg: RunConfig, resolved: ResolvedModel) -> tuple[ResolvedModel, str]:
    """The model whose own samples stand for the general language a run keeps (the forgetting probe's texts, data.replay's),
    and what to call it: monitor.drift_from when set; the model trained; or for a student cut from its teacher, the teacher,
    whose language the cut model has yet to regain (for a model cut in an earlier run, the teacher its record names, while
    that is still here)."""
    if cfg.monitor.drift_from is not None:
        return resolve_drift_source(cfg.monitor.drift_from, cfg.model.trust_remote_code), cfg.monitor.drift_from
    if cfg.distill.student is not None:
        return resolve_teacher(cfg.distill.teacher, cfg.model.trust_remote_code, log=lambda _: None), "the teacher"
    record = read_record(resolved.path)
    if record is not None:
        try:
            return resolve_model(record["teacher"], cfg.model.trust_remote_code, log=lambda _: None), "the model it was cut from"
        except UserError:
            pass
    return resolved, "the base model"


def resolve_drift_source(spec: str, trust_remote_code: bool = False) -> ResolvedModel:
    """monitor.drift_from's files, found as a teacher's are; a run whose head gives no text is refused."""
    resolved = resolve_named_model("monitor.drift_from", spec, trust_remote_code, lambda _: None, "name the model it started from",
                                   "a model name, a model directory, a .gguf file or a finished run that shares the trained "
                                   "model's tokenizer")
    saved = read_task(Path(resolved.path))
    if saved.get("task") == "reward" or (saved.get("task") == "classify" and saved.get("method") == "head") or \
            scores_with_head(load_model_config(resolved)):
        raise UserError(f"monitor.drift_from {spec}: a classifier's or reward model's head writes no text to count a drift "
                        "from; name a language model (the one the run's model started from)")
    return resolved


def check_teacher_labels(cfg: RunConfig, labels: list[str] | None, log=print) -> ResolvedModel:
    """The teacher, checked against the student's labels before any model is built (a student made from a classifier
    teacher loads the teacher's head, which must have the labels the data has)."""
    resolved = resolve_teacher(cfg.distill.teacher, cfg.model.trust_remote_code, log)
    _check_labels(cfg.distill.teacher, resolved, labels)
    return resolved


def tokenizer_difference(student, teacher) -> str | None:
    """How two tokenizers differ, in a few words; None when they map every token to the same id."""
    if len(student) != len(teacher):
        return f"{len(teacher):,} tokens against the student's {len(student):,}"
    ours, theirs = student.get_vocab(), teacher.get_vocab()
    if ours != theirs:
        token = next(t for t in sorted(ours) if theirs.get(t) != ours[t])
        return f"token {token!r} is {theirs.get(token)} for the teacher and {ours[token]} for the student"
    if student.eos_token_id != teacher.eos_token_id:
        return f"end-of-sequence token {teacher.eos_token_id} against the student's {student.eos_token_id}"
    return None


def checked_teacher(cfg: RunConfig, log=print) -> ResolvedModel:
    """The teacher, resolved and checked as a teacher for the run's task and block size (before a student is cut
    or prepared)."""
    teacher = resolve_teacher(cfg.distill.teacher, cfg.model.trust_remote_code, log=log)
    check_teacher_kind(cfg.distill.teacher, teacher, task_kind(cfg).has_head(cfg))
    context = context_length(load_model_config(teacher))
    if context and cfg.data.block_size > context:  # its positions past the context have no embedding
        raise UserError(f"distill.teacher {cfg.distill.teacher}: its context is {context:,} tokens, shorter than data.block_size "
                        f"{cfg.data.block_size:,}; lower data.block_size to {context:,}, or give a teacher with a longer context")
    return teacher


def check_teacher_kind(spec: str, resolved: ResolvedModel, head: bool) -> dict:
    """The teacher's saved task, after checking it can teach this student: a student that classifies with a head learns
    from a classifier with a head; any other student from a language model (a classifier's or a reward model's head
    gives no distribution over tokens). Checked before a student is cut."""
    saved = read_task(Path(resolved.path))
    if head and (saved.get("task") != "classify" or saved.get("method") != "head"):
        raise UserError(f"distill.teacher {spec}: the student classifies with a head, so the teacher must be a classifier run "
                        "trained with a head (task classify); train one first")
    config = load_model_config(resolved)
    if not head and scores_with_head(config):
        head_name = next(name for name in config.architectures if name.endswith("ForSequenceClassification"))
        raise UserError(f"distill.teacher {spec}: a model with a scoring head ({head_name}) cannot teach a "
                        "language model's tokens; give a language-model teacher, or distill into a classifier with a head "
                        "(task classify, classify.method head)")
    return saved


def _check_labels(spec: str, resolved: ResolvedModel, labels: list[str] | None) -> None:
    saved = check_teacher_kind(spec, resolved, labels is not None)
    if labels is not None and list(saved.get("labels", [])) != list(labels):
        raise UserError(f"distill.teacher {spec}: its labels {saved.get('labels')} are not the student's {labels}; "
                        "the teacher and the student must classify into the same labels, in the same order")


def load_teacher(cfg: RunConfig, resolved: ResolvedModel, kind, student_tokenizer, labels: list[str] | None, wrap: Callable,
                 device: torch.device, precision: str, log=print) -> Teacher:
    """The frozen teacher for `cfg.distill.teacher` (its files `resolved`, checked by `check_teacher_labels`), refused in
    one line when it does not fit the student."""
    spec = cfg.distill.teacher
    difference = tokenizer_difference(student_tokenizer, kind.tokenizer(resolved, log=lambda _line: None))
    if difference:
        raise UserError(f"distill.teacher {spec}: its tokenizer is not the student's ({difference}); distillation compares "
                        "the two models token by token: give a teacher of the student's family, or a student of the teacher's")
    model = load_model(resolved, dtype=low_precision_dtype(precision), classifier=labels is not None)  # frozen: no fp32 masters
    untrained = len(student_tokenizer) - model.get_input_embeddings().num_embeddings
    if labels is None and untrained > 0:
        raise UserError(f"distill.teacher {spec}: the student's tokenizer has {untrained} tokens the teacher has no embeddings for "
                        "(a chat template's markers), so its predictions around them would mean nothing; give a teacher "
                        "trained with task chat on this template (a chat run's folder)")
    model = model.to(device).eval().requires_grad_(False)
    count = sum(p.numel() for p in model.parameters())
    log(f"teacher {spec}: {count / 1e6:.1f}M parameters, frozen")
    return Teacher(spec, resolved, model, wrap(model), count)
