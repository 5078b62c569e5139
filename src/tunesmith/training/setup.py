"""Building a run's parts: the model and tokenizer, the prepared data as datasets, the step plan and the step runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig, check_block_size
from ..data import prepare_data
from ..data.prepare import validation_fingerprint
from ..distill import (DistillLoss, HiddenMatch, Teacher, check_teacher_labels, checked_teacher, kept_blocks, language_source, load_teacher,
                       make_student, measure_pick, read_record, student_config)
from ..distill.cache import WithTeacherTopk, cache_key, teacher_topk
from ..errors import ConfigError, UserError
from ..evaluation.forgetting import BaseSampler, Probe, build_probe, check_drift_tokenizer, check_general_probe, replay_files
from ..methods import method_of
from ..models import ResolvedModel, context_length, count_parameters, load_model_config, resolve_model, tunesmith_home
from ..models.weights import architecture_keeps_packed_apart, parameter_counts, short_count
from ..runtime import enable_tf32, flops_per_token, pick_device, pick_precision
from ..tasks import Task, build_task, task_kind
from .build import build_model
from .checkpoint import SavedCheckpoint
from .compiling import use_cache_under
from .distributed import Distributed, wrap_ddp, wrap_fsdp
from .fused_loss import training_loss
from .neftune import add_embedding_noise
from .optim import build_optimizer, build_scheduler
from .plan import StepPlan
from .resume import check_validation_text
from .step import StepRunner, largest_micro_batch


@dataclass
class RunParts:
    task: Task
    labels: list[str] | None  # a classification head's classes; None for a language model
    device: torch.device
    precision: str
    resolved: ResolvedModel
    tokenizer: object
    model: torch.nn.Module
    runner: StepRunner
    plan: StepPlan
    train: object  # TokenBlocks or Examples
    val: object
    sharded: bool
    trainable: int
    data_dir: Path
    flops_per_token: float
    validation: str  # what its evaluations are scored on (data.prepare.validation_fingerprint)
    probe: Probe | None = None
    probe_note: str | None = None  # why there is no probe
    rollouts: object = None  # with a task that samples its training examples (GRPO): the training dataset, which makes them
    teacher: Teacher | None = None  # with distill.teacher
    student_record: dict | None = None  # the model's record of the teacher it was cut from (distill/student.py)


def settle(cfg: RunConfig, console: Console, context: Distributed) -> tuple[RunConfig, ResolvedModel]:
    """The model's files, and the config the run trains with: every setting definite before anything is built (a
    data.packing of auto becomes what this model's architecture allows, see `TaskKind.settle`)."""
    with context.main_first():  # the embedded default is converted once, by the first process
        if cfg.distill.student is not None:  # the student is made from the teacher: model.name is not used
            teacher, cut = checked_teacher(cfg, log=console.print), cfg.distill.student.from_teacher
            resolved = teacher if measures_student(cfg) else \
                make_student(teacher, cut.keep_layers, tunesmith_home(), console.print, cut.pick)
        else:
            resolved = resolve_model(cfg.model.name, cfg.model.trust_remote_code, log=console.print)
            if cfg.distill.teacher:
                checked_teacher(cfg, log=console.print)
    keeps_apart = architecture_keeps_packed_apart(load_model_config(resolved), cfg.model.trust_remote_code)
    return task_kind(cfg).settle(cfg, keeps_apart, console.print), resolved


def measures_student(cfg: RunConfig) -> bool:
    """Whether the student's blocks are chosen on the training data, so it is made once the data is prepared (the teacher's
    files standing in until then: the student shares its tokenizer and architecture)."""
    return cfg.distill.student is not None and cfg.distill.student.from_teacher.pick == "similar"


def _prepare(cfg: RunConfig, resolved: ResolvedModel, console: Console, device: torch.device, precision: str):
    """The tokenizer, the prepared data (with rehearsal text when data.replay), and the forgetting probe."""
    kind = task_kind(cfg)
    model_config = load_model_config(resolved)
    check_block_size(cfg.data.block_size, context_length(model_config))
    tokenizer = kind.tokenizer(resolved, log=console.print)
    check_general_probe(cfg.monitor)
    skip = "monitor.general_probe is none" if cfg.monitor.general_probe == "none" else kind.probe_skip_reason(cfg, model_config)
    for key, what in (("max_drift", "hold the best step to"), ("drift_from", "count from another model")):
        if skip and getattr(cfg.monitor, key) is not None:
            raise ConfigError([f"monitor.{key}: this run has no drift to {what} ({skip}); drop {key}"])
    sampler = None
    if cfg.data.replay or not skip:
        sampled, name = language_source(cfg, resolved)
        sampler = BaseSampler(sampled, device, precision, console.print, source=name)
        if cfg.monitor.drift_from is not None:
            check_drift_tokenizer(cfg.monitor.drift_from, tokenizer, sampler.tokenizer)
    trained = student_config(model_config, cfg.distill.student.from_teacher.keep_layers) if measures_student(cfg) else model_config
    data = prepare_data(cfg.data, cfg.clean, tokenizer, tunesmith_home(), model_params=count_parameters(trained),
                        task=kind.preparer(cfg), replay_files=replay_files(cfg, sampler))
    for line in data.summary_lines():
        console.print(f"data  {line}", highlight=False)
    probe = None
    if not skip:
        evaluated = data.meta["val"]["tokens"]
        if cfg.train.eval_max_blocks:
            evaluated = min(evaluated, cfg.train.eval_max_blocks * cfg.data.block_size)
        probe = build_probe(cfg.monitor, sampler, tokenizer, evaluated, context_length(model_config))
        console.print(probe.describe(), highlight=False)
    return tokenizer, data, probe, skip


def _runner(cfg: RunConfig, task: Task, model, module, fuse: bool, device, precision: str, micro: int, total_steps: int, sharded: bool,
            console: Console, context: Distributed, teacher: Teacher | None, vocab: int | None, hidden: HiddenMatch | None) -> StepRunner:
    optimizer = build_optimizer(model, cfg.train, device, sharded)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    forward = wrap_ddp(module, device) if context.enabled and not sharded else module
    loss = _loss(task, forward, fuse, cfg, teacher, vocab, hidden)
    runner = StepRunner(model, loss, optimizer, scheduler, scaler, device, precision, micro, cfg.train.grad_clip, console.print, context)
    use_cache_under(tunesmith_home())
    if cfg.train.compile is True:
        runner.compile()
    return runner


def _loss(task: Task, module, fuse: bool, cfg: RunConfig, teacher: Teacher | None = None, vocab: int | None = None,
          hidden: HiddenMatch | None = None):
    """The task's own training loss; with a teacher, the data's cross-entropy mixed with the divergence from it (and the
    hidden-state distance, with `hidden`); else next-token cross-entropy (with the output layer fused in where `fuse`)."""
    if teacher is not None:
        return DistillLoss(module, teacher.module, cfg.distill, vocab, cfg.train.label_smoothing, hidden, fuse)
    return task.training_loss(module) or training_loss(module, fuse, cfg.train.label_smoothing)


def _with_topk(cfg: RunConfig, task: Task, teacher: Teacher, train, vocab: int, data_dir: Path, device, precision: str,
               console: Console, context: Distributed):
    """The training rows with the teacher's top-k log-probabilities, from the cache beside the token files."""
    settings = {"k": cfg.distill.topk, "temperature": cfg.distill.temperature, "task": cfg.task, "packing": task.packing, "block_size": cfg.data.block_size,
                "precision": precision, "rows": len(train)}
    folder = data_dir / "distill" / f"topk-{cache_key(teacher.identity, data_dir, settings)}"
    with context.main_first():
        rows = teacher_topk(teacher.logits, train, cfg.distill.topk, vocab, cfg.distill.temperature, folder, device, precision,
                           console.print)
    return WithTeacherTopk(train, rows) if rows is not None else train


def _measured_student(cfg: RunConfig, teacher: ResolvedModel, data, labels, device, precision: str, console: Console,
                      context: Distributed) -> ResolvedModel:
    """The student whose blocks the teacher's hidden states on the training data choose: measured by rank 0, which every
    rank then makes (or finds) the same student from."""
    keep = cfg.distill.student.from_teacher.keep_layers
    total = load_model_config(teacher).num_hidden_layers
    kept_blocks(total, keep)  # a count the teacher cannot give is refused before anything is loaded
    pick = None
    if context.is_main:
        task = build_task(cfg, data.meta)
        pick = measure_pick(teacher, keep, task.dataset(data, "train", training=True), task.training_module, labels is not None,
                            device, precision)
        console.print(pick.describe(total), highlight=False)
    pick = context.share(pick)
    with context.main_first():
        return make_student(teacher, pick.kept, tunesmith_home(), console.print)


def _eval_batch(cfg: RunConfig) -> int:
    return cfg.train.micro_batch_size if isinstance(cfg.train.micro_batch_size, int) else 4


def check_weights(cfg: RunConfig, precision: str, context: Distributed) -> None:
    if cfg.train.weights != "bf16":
        return
    if precision != "bf16":
        raise ConfigError([f"train.weights: bf16 needs train.precision bf16 (this run uses {precision}); use train.weights: fp32"])
    if context.enabled and cfg.train.distributed == "fsdp":
        raise ConfigError(["train.weights: bf16 runs with train.distributed: ddp, not fsdp; use ddp or train.weights: fp32"])


def setup(cfg: RunConfig, resolved: ResolvedModel, console: Console, context: Distributed,
          resumed_from: SavedCheckpoint | None = None) -> RunParts:
    """Prepare the data, load the model, and build the task, the plan, the optimizer and the step runner (`cfg` settled).
    A resume on validation text other than `resumed_from`'s is refused as soon as the data is prepared."""
    torch.manual_seed(cfg.train.seed + context.rank)
    device = context.device(pick_device(cfg.train.device))
    precision = pick_precision(cfg.train.precision, device)
    enable_tf32(device)
    check_weights(cfg, precision, context)
    with context.main_first():
        tokenizer, data, probe, probe_note = _prepare(cfg, resolved, console, device, precision)
    validation = validation_fingerprint(data.directory, block_size=cfg.data.block_size, packing=cfg.data.packing,
                                        eval_max_blocks=cfg.train.eval_max_blocks)
    if resumed_from is not None:
        check_validation_text(resumed_from.state.get("validation"), validation, resumed_from.path)
    kind = task_kind(cfg)
    labels = kind.head_labels(cfg, data.meta)
    if measures_student(cfg):
        resolved = _measured_student(cfg, resolved, data, labels, device, precision, console, context)
    student_record = read_record(resolved.path, getattr(load_model_config(resolved), "num_hidden_layers", None))
    teacher_files = check_teacher_labels(cfg, labels, console.print) if cfg.distill.teacher else None
    storage = method_of(cfg.model.method).storage_dtypes(cfg.train.weights, precision)
    model = build_model(resolved, cfg.model, device, tokenizer, labels, storage)
    model.train()
    trainable, total_params = parameter_counts(model)
    stored = "" if storage == (None, None) else f"; {'weights' if storage[1] else 'frozen weights'} in {precision}"
    console.print(f"model {resolved.spec}: {short_count(total_params)} parameters, {short_count(trainable)} trainable ({cfg.model.method}); "
                  f"{device.type}, {precision}{stored}", highlight=False)
    if cfg.train.neftune_alpha:
        add_embedding_noise(model, cfg.train.neftune_alpha)
    with context.main_first():
        reference = kind.reference(cfg, data.meta, model, data, resolved, device, precision,
                                   cfg.train.eval_batch_size or _eval_batch(cfg), console.print)
    task = build_task(cfg, data.meta, reference)
    module = task.training_module(model)
    train, val = task.dataset(data, "train", training=True), task.dataset(data, "val")
    rollouts = task.rollouts(train, model, tokenizer, device, precision)
    train = rollouts if rollouts is not None else train
    teacher = load_teacher(cfg, teacher_files, kind, tokenizer, labels, task.training_module, device, precision, console.print) \
        if teacher_files else None
    vocab = len(tokenizer) if labels is None else None
    hidden = HiddenMatch(model, teacher.model, student_record) if teacher is not None and cfg.distill.hidden else None
    if hidden is not None:
        console.print(hidden.describe(), highlight=False)
    if teacher is not None and cfg.distill.cache == "topk":
        train = _with_topk(cfg, task, teacher, train, vocab, data.directory, device, precision, console, context)
    # a head has no vocabulary, and DDP runs its wrapper
    fuse = cfg.train.fused_loss and not context.enabled and labels is None
    micro = cfg.train.micro_batch_size
    if micro == "auto":
        micro = largest_micro_batch(model, _loss(task, module, fuse, cfg, teacher, vocab, hidden), train, device, precision, 64,
                                    console.print)
    plan = StepPlan(len(train), micro, cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps, cfg.train.seed,
                    context.world_size, context.rank, task.example_lengths(train), task.steps_per_batch)
    if len(train) < plan.blocks_per_step and context.enabled:
        raise UserError(f"{len(train)} training blocks cannot fill one step of {plan.blocks_per_step} blocks across "
                        f"{context.world_size} processes; use fewer processes, a smaller batch or more data")
    sharded = context.enabled and cfg.train.distributed == "fsdp"
    if sharded:
        model = wrap_fsdp(model, device)
    runner = _runner(cfg, task, model, task.training_module(model) if sharded else module, fuse, device, precision, micro,
                     plan.total_steps, sharded, console, context, teacher, vocab, hidden)
    return RunParts(task, labels, device, precision, resolved, tokenizer, model, runner, plan, train, val, sharded, trainable, data.directory,
                    flops_per_token(load_model_config(resolved), total_params, cfg.data.block_size), validation, probe, probe_note,
                    rollouts, teacher, student_record)
