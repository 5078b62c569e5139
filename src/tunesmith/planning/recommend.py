"""`tunesmith recommend`: which model, method, micro-batch, accumulation and epochs fit this data, device and time.

Every candidate and method gets a memory estimate (simulated, see `memory`) and a throughput estimate
(see `throughput`); the largest model whose planned epochs fit the memory and the hours wins, with
full fine-tuning preferred over LoRA, LoRA over freezing, and QLoRA last (it trades speed for memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import DataConfig, RunConfig, build_config
from ..errors import UserError
from ..methods import METHODS, method_of
from ..models.weights import short_count
from .candidates import Candidate
from .memory import MemoryEstimate, MemoryModel, StepShape, as_qlora, as_resident, fit_memory, frozen_copy_bytes
from .throughput import DeviceRate, tokens_per_second

CHARS_PER_TOKEN = 4.0  # English text under GPT-2-style BPE vocabularies; the data is not tokenized to plan
HEADROOM = 0.9  # plan to use at most this share of the memory: allocators fragment, and other programs run too
TARGET_BATCH = 16  # sequences per optimizer step when the data allows it
MIN_STEPS = 100  # small data gets more epochs, up to MAX_EPOCHS, so that training takes at least this many steps
MAX_EPOCHS = 10
LARGE_DATA_TOKENS = 20_000_000  # from here one epoch is enough


@dataclass(frozen=True)
class DataSize:
    files: int
    records: int
    characters: int
    labels: int = 0  # distinct labels (task classify)

    @property
    def tokens(self) -> int:
        return int(self.characters / CHARS_PER_TOKEN)


@dataclass
class Option:
    """One model and method: its memory at the micro-batch it would use, and its speed."""

    candidate: Candidate
    method: str
    memory: MemoryModel
    micro_batch: int  # the largest that fits; 0 when not even 1 does
    tokens_per_second: float
    hours_per_epoch: float
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.micro_batch > 0 and not self.note

    @property
    def base_params(self) -> int:
        """The pre-trained model's parameters, adapters not counted."""
        return self.memory.params - (self.memory.trainable if method_of(self.method).adapters else 0)

    @property
    def estimate(self) -> MemoryEstimate:
        return self.memory.estimate(max(self.micro_batch, 1))


@dataclass
class Plan:
    data: DataSize
    device: str
    memory_budget: int
    hours: float
    rate: DeviceRate
    options: list[Option]
    chosen: Option | None = None
    micro_batch: int = 1
    grad_accum: int = 1
    epochs: float = 1.0
    reasons: list[str] = field(default_factory=list)


def _characters(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_characters(v) for v in value.values())
    if isinstance(value, list):
        return sum(_characters(v) for v in value)
    return 0


def measure_data(cfg: RunConfig) -> DataSize:
    """Files, records and characters of the training data (the text field for lm; the whole record for chat and classify)."""
    from ..data.read import DocumentReader, expand_paths
    from ..data.report import DataReport
    from ..tasks import task_kind

    if not cfg.data.train:
        raise UserError("recommend needs --data FILE (the training data, to size the epochs)")
    files = expand_paths(cfg.data.train_paths, "data.train")
    kind = task_kind(cfg)
    packed = kind.preparer(cfg).layout == "packed"
    reader = DocumentReader.for_data(cfg.data, cfg.clean, DataReport(), on_error="skip")
    records = characters = 0
    labels: set[str] = set()
    for record in reader.records(files):
        records += 1
        characters += len(reader.text(record) or "") if packed else _characters(record.value)
        label = kind.record_label(cfg, record.value)
        if label is not None:
            labels.add(label)
    if packed:
        reader.check_fields_found()
    if not characters:
        raise UserError(f"{', '.join(cfg.data.train_paths)}: no text found; check data.text_field")
    return DataSize(len(files), records, characters, len(labels))


def memory_budget(device: torch.device) -> int:
    """The device's memory: a GPU's total, or the RAM available now on CPU and MPS."""
    import psutil

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().available


def parse_size(text: str) -> int:
    """'24GB', '24GiB', '24G', '512MB' -> bytes (GB and GiB alike mean 2**30, as tools report memory)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in units else (cleaned, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UserError(f"--memory {text}: give a size such as 24GB or 512MB") from None
    if not math.isfinite(value) or value < 1:
        raise UserError(f"--memory {text}: give a size of at least one byte, such as 24GB or 512MB")
    return int(value)


def _availability(candidate: Candidate, hub: bool) -> str:
    """Why a candidate cannot be loaded here, or '' when it can."""
    from ..models.embedded import EMBEDDED_NAME
    from ..models.resolve import _in_hub_cache

    if candidate.name == EMBEDDED_NAME or Path(os.path.expanduser(candidate.name)).exists() or hub or _in_hub_cache(candidate.name):
        return ""
    return "needs a download (hub not reachable)"


def _shape(cfg: RunConfig, method: str, precision: str, labels: int) -> StepShape:
    from ..tasks import task_kind

    return StepShape(method, cfg.data.block_size, precision, task_kind(cfg).head_classes(cfg, labels),
                     cfg.model.gradient_checkpointing, cfg.model.lora_rank, cfg.train.weights)


def _options(cfg: RunConfig, candidates: list[Candidate], device: torch.device, precision: str, budget: int, data: DataSize,
             rate: DeviceRate, hub: bool, log) -> list[Option]:
    from ..models import context_length
    from ..tasks import task_kind

    methods = [method for method in METHODS.values() if method.runs_on(device.type)]
    limit = TARGET_BATCH if device.type == "cuda" else 4  # more than 4 sequences buys no speed on CPU
    rows = task_kind(cfg).example_rows(cfg)
    options = []
    for candidate in candidates:
        log(f"estimating {candidate.label} ...")
        context = context_length(candidate.config)
        too_long = f"block {cfg.data.block_size} > context {context}" if context and cfg.data.block_size > context else ""
        fitted: dict[str, MemoryModel] = {}
        for method in methods:
            if method.quantized_base and method.unquantized in fitted:
                memory = as_qlora(fitted[method.unquantized])
            else:
                memory = fit_memory(candidate.config, _shape(cfg, method.name, precision, data.labels))
                if device.type == "cpu":  # the kernel weighs the whole process, and kills it rather than raise
                    memory = as_resident(memory)
            fitted[method.name] = memory
            speed = tokens_per_second(candidate.config, memory.params, memory.trainable, method.name, cfg.data.block_size, rate)
            note = too_long or _availability(candidate, hub)
            held = frozen_copy_bytes(cfg, memory.params, method.name)
            fits = memory.largest_micro_batch(budget * HEADROOM - held, limit * rows)
            options.append(Option(candidate, method.name, memory, fits // rows, speed,
                                  data.tokens / speed / 3600, note))
    return options


def planned_epochs(data: DataSize, sequences: int, batch: int) -> float:
    """3 passes by default; more for small data (at least MIN_STEPS steps, at most MAX_EPOCHS); 1 for large data."""
    if data.tokens >= LARGE_DATA_TOKENS:
        return 1.0
    steps_per_epoch = max(1, sequences // batch)
    return float(min(MAX_EPOCHS, max(3, math.ceil(MIN_STEPS / steps_per_epoch))))


def _sequences(cfg: RunConfig, data: DataSize) -> int:
    """Training sequences: blocks of block_size tokens (packed text, or examples packed into rows), one per record
    when examples are padded (less the validation share)."""
    from ..tasks import task_kind

    whole = data.records if task_kind(cfg).packing_of(cfg) == "padded" else max(1, data.tokens // cfg.data.block_size)
    return max(1, int(whole * (1 - cfg.data.val_fraction)))


def choose(plan: Plan, cfg: RunConfig) -> Plan:
    """The largest model whose planned epochs fit the hours, with the first method (in the order of `METHODS`) that fits its memory."""
    sequences = _sequences(cfg, plan.data)
    batch = max(1, min(TARGET_BATCH, sequences // 20))  # at least 20 steps an epoch
    epochs = planned_epochs(plan.data, sequences, batch)
    fitting = [o for o in plan.options if o.fits]
    if not fitting and all(o.note for o in plan.options):
        raise UserError(f"no candidate can be used here ({plan.options[0].note}); add --candidate with a local model, "
                        "a .gguf file or smollm2-135m")
    if not fitting:
        raise UserError(f"no candidate fits in {plan.memory_budget / 2**30:.1f} GiB at block size {cfg.data.block_size}; "
                        "lower --block-size, set model.gradient_checkpointing=true, or give --memory if more is free")
    in_time = [o for o in fitting if o.hours_per_epoch * epochs <= plan.hours]
    if in_time:
        biggest = max(o.base_params for o in in_time)
        chosen = min((o for o in in_time if o.base_params == biggest), key=lambda o: list(METHODS).index(o.method))
        plan.reasons.append(f"{chosen.candidate.label} is the largest model whose {epochs:g} epochs fit in {plan.hours:g} h "
                            f"({chosen.hours_per_epoch * epochs:.2f} h estimated)")
    else:
        chosen = min(fitting, key=lambda o: o.hours_per_epoch)
        epochs = round(max(0.05, plan.hours / chosen.hours_per_epoch), 2)
        plan.reasons.append(f"no model trains {planned_epochs(plan.data, sequences, batch):g} epochs in {plan.hours:g} h; "
                            f"{chosen.candidate.label} is the fastest and does {epochs:g} epoch(s) in that time")
    if not method_of(chosen.method).trains_all:
        full = next((o for o in plan.options if o.candidate is chosen.candidate and method_of(o.method).trains_all), None)
        if full is not None and not full.micro_batch:
            plan.reasons.append(f"full fine-tuning needs {full.estimate.total / 2**30:.1f} GiB at micro-batch 1, "
                                f"more than {HEADROOM:.0%} of {plan.memory_budget / 2**30:.1f} GiB")
        elif full is not None and full.hours_per_epoch * epochs > plan.hours:
            plan.reasons.append(f"full fine-tuning would take {full.hours_per_epoch * epochs:.2f} h")
    plan.chosen = chosen
    plan.micro_batch = min(chosen.micro_batch, batch)
    plan.grad_accum = max(1, math.ceil(batch / plan.micro_batch))
    plan.epochs = epochs
    plan.reasons.append(f"{sequences:,} training sequences of up to {cfg.data.block_size} tokens: batches of "
                        f"{plan.micro_batch * plan.grad_accum} ({plan.micro_batch} x {plan.grad_accum} accumulated), "
                        f"{epochs:g} epochs (early stopping on the validation loss ends it sooner if it overfits)")
    return plan


def make_plan(cfg: RunConfig, candidates: list[Candidate], memory: int | None, hours: float, log=lambda _m: None) -> Plan:
    from ..models.resolve import _hub_reachable
    from ..runtime import pick_device, pick_precision
    from .throughput import device_rate

    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    budget = memory or memory_budget(device)
    data = measure_data(cfg)
    rate = device_rate(device, precision, cfg.train.peak_tflops)
    options = _options(cfg, candidates, device, precision, budget, data, rate, _hub_reachable(timeout=2.0), log)
    plan = Plan(data, device.type, budget, hours, rate, options)
    return choose(plan, cfg)


def recommended_config(plan: Plan, cfg: RunConfig) -> dict:
    """The run config that the plan describes: the user's data settings, the chosen model, method and schedule."""
    chosen = plan.chosen
    method = method_of(chosen.method)
    model = {"name": chosen.candidate.name, "method": method.name, **method.recommended_settings(chosen.candidate.config)}
    if cfg.model.gradient_checkpointing:
        model["gradient_checkpointing"] = True
    defaults = DataConfig().model_dump(mode="json")
    data = {key: value for key, value in cfg.data.model_dump(mode="json").items() if value != defaults[key] or key in ("train", "block_size")}
    raw = {"task": cfg.task, "model": model, "data": data,
           "train": {"lr": method.learning_rate, "epochs": plan.epochs, "micro_batch_size": plan.micro_batch,
                     "grad_accum": plan.grad_accum}}
    from ..tasks import task_kind

    section = task_kind(cfg).section
    if section:
        raw[section] = cfg.model_dump(mode="json")[section]
    build_config(raw)  # the written file must load
    return raw


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def _memory_unit(plan: Plan) -> tuple[str, int]:
    """GiB for real models, MiB when every option is under one GiB (small or test models)."""
    return ("GiB", 2**30) if max(o.estimate.total for o in plan.options) >= 2**30 else ("MiB", 2**20)


def table_lines(plan: Plan) -> list[str]:
    """The options side by side: memory by part at the micro-batch each would use, speed, and hours per epoch."""
    _, unit = _memory_unit(plan)
    header = (f"{'model':<24} {'method':<7} {'trainable':>9} {'weights':>8} {'grads':>7} {'optim':>7} {'activ.':>7} {'proc.':>7} "
              f"{'total':>7} {'micro':>5} {'tok/s':>8} {'h/epoch':>8}  note")
    lines = [header, "-" * len(header)]
    for option in plan.options:
        e = option.estimate
        parts = " ".join(f"{value / unit:>{width}.2f}" for value, width in
                         ((e.weights, 8), (e.gradients, 7), (e.optimizer, 7), (e.activations, 7), (e.process, 7), (e.total, 7)))
        micro = str(option.micro_batch) if option.micro_batch else "-"
        note = option.note or ("" if option.micro_batch else "does not fit")
        mark = "*" if option is plan.chosen else " "
        lines.append(f"{option.candidate.label:<24} {option.method:<7} {short_count(option.memory.trainable):>9} {parts} {micro:>5} "
                     f"{option.tokens_per_second:>8,.0f} {option.hours_per_epoch:>8.2f} {mark}{note}")
    return lines


def summary_lines(plan: Plan) -> list[str]:
    rate = f"{plan.rate.matmul_flops / 1e12:.2f} TFLOP/s matmul ({'timed here' if plan.rate.measured else 'table peak'})"
    return [f"data: {plan.data.records:,} records in {plan.data.files} file(s), {plan.data.characters:,} characters "
            f"(about {plan.data.tokens:,} tokens)",
            f"device: {plan.rate.name}, {rate}; memory budget {_gib(plan.memory_budget)} GiB "
            f"(plans use at most {HEADROOM:.0%}); time budget {plan.hours:g} h",
            f"memory in {_memory_unit(plan)[0]} at the micro-batch each option would use "
            "(activ.: activations and temporaries at the peak; proc.: the rest of the process on a CPU)"]


def plan_dict(plan: Plan) -> dict:
    return {"data": {"files": plan.data.files, "records": plan.data.records, "characters": plan.data.characters, "tokens": plan.data.tokens},
            "device": plan.device, "memory_budget": plan.memory_budget, "hours": plan.hours,
            "options": [{"model": o.candidate.name, "method": o.method, "params": o.memory.params, "trainable": o.memory.trainable,
                         "micro_batch": o.micro_batch, "memory": {**vars(o.estimate), "total": o.estimate.total},
                         "tokens_per_second": o.tokens_per_second, "hours_per_epoch": o.hours_per_epoch, "note": o.note}
                        for o in plan.options],
            "recommended": {"model": plan.chosen.candidate.name, "method": plan.chosen.method, "micro_batch_size": plan.micro_batch,
                            "grad_accum": plan.grad_accum, "epochs": plan.epochs, "reasons": plan.reasons}}
