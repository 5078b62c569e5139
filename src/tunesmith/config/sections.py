"""The config's general sections: the model, data, cleaning, training, monitoring and output settings, with their
defaults (the use cases' own are in `use_cases`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .template import template_parts

DEFAULT_MODEL = "smollm2-135m"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        """`warmup_steps: true` is a mistake, not the number 1 that pydantic would make of it."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _takes(annotation, (int, float)) and not _takes(annotation, (bool,)):
            raise ValueError("a number is needed, not true or false")
        return value


def _takes(annotation, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type, or a type in its union, is one of `kinds` (a list's items do not count)."""
    if annotation in kinds or annotation is Any:
        return True
    return get_origin(annotation) is not list and any(_takes(arg, kinds) for arg in get_args(annotation))


def one_spelling(name: str | None) -> str | None:
    """A path without a trailing slash (nor '.' parts, when absolute), so that a resume compares the same folder as the
    same; names that are not paths have neither."""
    if name is None:
        return None
    return str(Path(name)) if os.path.isabs(name) else name.rstrip("/") or name


class ModelConfig(Section):
    name: str = Field(DEFAULT_MODEL, description="smollm2-135m (embedded), a hub id, a local HF directory or a .gguf file")
    method: Literal["full", "freeze", "lora", "qlora"] = Field("full", description="full: all weights; freeze: the top blocks only; lora: low-rank adapters; qlora: adapters on a 4-bit base (CUDA)")
    freeze_layers: int = Field(0, ge=0, description="with freeze: how many blocks from the bottom stay fixed (the embeddings always do)")
    train_last_layers: int | None = Field(None, ge=1, description="with freeze: train only this many top blocks and the head (overrides freeze_layers)")
    lora_rank: int = Field(8, ge=1, description="with lora/qlora: rank of the adapters")
    lora_alpha: float = Field(16.0, gt=0, description="with lora/qlora: scaling of the adapters (alpha / rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="with lora/qlora: dropout on the adapters' input (one mask per input, shared by the adapters that read it)")
    lora_targets: list[str] | None = Field(None, description="with lora/qlora: module names to adapt (null: attention and MLP projections of the architecture)")
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout (GPT-2: residual, embedding, attention; Llama: attention); null keeps it")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, about 30% slower")
    trust_remote_code: bool = Field(False, description="allow a hub model's own Python code to run (off unless you trust it)")

    @field_validator("name")
    @classmethod
    def _name_spelled_once(cls, value: str) -> str:
        return one_spelling(value)


class DataSource(Section):
    """One weighted source of training data: its files and its share of the training tokens."""

    path: str | list[str]
    weight: float = Field(gt=0, allow_inf_nan=False)

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class DataConfig(Section):
    train: list[str | DataSource] = Field(default_factory=list, description="files, folders or globs: .txt .md .jsonl .json .csv .tsv .parquet .html (and .gz of the line formats); or weighted sources, [{path: support/, weight: 0.8}, {path: general.jsonl, weight: 0.2}], each then up- or down-sampled by whole documents to its share of the training tokens")
    val: list[str] = Field(default_factory=list, description="optional validation files; when empty, val_fraction of the documents is held out")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out for validation (at least one document)")
    text_field: str = Field("text", description="field (JSON, Parquet; nested as meta.text) or column (CSV, TSV) that holds the text")
    template: str | None = Field(None, description='build each document from several fields, e.g. "{title}\\n\\n{body}" (overrides text_field)')
    on_error: Literal["fail", "skip"] = Field("fail", description="a malformed row stops prepare (fail) or is skipped and counted (skip)")
    txt_documents: Literal["blank_line", "file"] = Field("blank_line", description=".txt/.md: documents are separated by blank lines, or each file is one document")
    block_size: int = Field(256, ge=8, description="tokens per training sequence (at most the model's context length); chat and classify: the longest example, and the length of a packed row")
    label_field: str = Field("label", description="task classify: field or column that holds the label (a string or an integer)")
    packing: Literal["auto", "joined", "documents", "padded"] = Field("auto", description="joined: documents joined with EOS into full blocks (lm); documents: packed into blocks with attention and positions confined to each document or example; padded: one example per row (chat, classify); auto: joined for lm, documents for chat and classify")
    replay: float = Field(0.0, ge=0, le=0.5, description="task lm: this share of the training tokens is rehearsal of general text, from monitor.general_probe's file when it names one (documents apart from the probe's), else texts sampled from the base model (monitor.drift_from's model when set; the teacher, for a student cut from it; apart from the probe's samples); 0: off")

    @field_validator("template")
    @classmethod
    def _template_names_fields(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # a blank template is none: the text is data.text_field's
        template_parts(value)
        return value

    @field_validator("train", "val", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, (str, Path, dict)):
            return [value if isinstance(value, dict) else str(value)]
        return value

    @field_validator("train")
    @classmethod
    def _all_weighted_or_none(cls, value: list) -> list:
        weighted = [isinstance(item, DataSource) for item in value]
        if any(weighted) and not all(weighted):
            raise ValueError("give every source a weight ({path: ..., weight: ...}) or none")
        if all(weighted) and not math.isfinite(sum(item.weight for item in value)):
            raise ValueError("the weights add up past the largest number; give shares such as 0.8 and 0.2")
        return value

    @property
    def train_paths(self) -> list[str]:
        """Every training file, folder or glob, whether the sources are weighted or not."""
        return [path for item in self.train for path in (item.paths if isinstance(item, DataSource) else [item])]

    @property
    def sources(self) -> list[tuple[list[str], float | None]]:
        """The training sources with their weights; plain paths form one source of their natural mix (weight None)."""
        if self.train and isinstance(self.train[0], DataSource):
            return [(item.paths, item.weight) for item in self.train]
        return [(list(self.train), None)] if self.train else []


class CleanConfig(Section):
    fix_unicode: bool = Field(True, description="repair mojibake with ftfy, then NFC-normalize")
    strip_control: bool = Field(True, description="remove control characters (tabs and newlines stay)")
    strip_markup: bool = Field(True, description="remove leftover HTML tags and decode entities")
    normalize_whitespace: bool = Field(True, description="single spaces, no trailing spaces, at most one blank line in a row")
    boilerplate: bool = Field(True, description="drop lines that repeat across many documents (signatures, navigation, footers)")
    boilerplate_min_fraction: float = Field(0.05, gt=0, le=1, description="a line is boilerplate when this share of documents contains it ...")
    boilerplate_min_docs: int = Field(10, ge=2, description="... and at least this many documents")
    mask_pii: list[Literal["email", "phone", "url", "ip"]] = Field(default_factory=list, description="replace these with <EMAIL>, <PHONE>, <URL>, <IP>")
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this many characters")
    max_chars: int | None = Field(1_000_000, ge=1, description="drop documents longer than this many characters (null: no limit)")
    min_tokens: int = Field(0, ge=0, description="drop documents shorter than this many tokens")
    max_tokens: int | None = Field(None, ge=1, description="drop documents longer than this many tokens (null: no limit)")
    dedup_exact: bool = Field(True, description="drop documents whose normalized text was seen before")
    dedup_near: bool = Field(True, description="drop near-duplicates (MinHash LSH over 5-token shingles)")
    near_threshold: float = Field(0.85, gt=0, lt=1, description="Jaccard similarity above which two documents are near-duplicates")


class TrainConfig(Section):
    lr: float = Field(5e-5, gt=0, le=1, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms)")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.95), description="AdamW betas, each in [0, 1)")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps before the cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decay ends at lr * min_lr_ratio")
    epochs: float = Field(3.0, gt=0, description="passes over the training blocks")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (with epochs: whichever ends first)")
    micro_batch_size: int | Literal["auto"] = Field(4, description="sequences per forward pass on each device; auto: the largest that fits (GPU)")
    eval_batch_size: int | None = Field(None, ge=1, description="sequences per evaluation forward pass (null: the micro-batch size)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm to this value (null: no clipping)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the training loss (validation loss stays plain)")
    neftune_alpha: float = Field(0.0, ge=0, description="chat and instruction data: NEFTune noise on the input embeddings while training, uniform with scale alpha / sqrt(row length x width) (0: off; 5 is the paper's usual value)")
    max_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row before rolling back to the last checkpoint with the lr halved")
    loss_watchdog: float | None = Field(3.0, gt=1, description="abort when the training loss stays above this multiple of its first value for 20 steps (null: off)")
    fused_loss: bool = Field(True, description="fuse the output layer into the loss over chunks of positions: a large vocabulary's logits are never held whole (single process)")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the model for training (falls back to eager if compilation fails); auto: on a CPU when the run is long enough to repay the compilation, and not on CUDA, where eager steps measured faster (benchmarks/RESULTS.md)")
    weights: Literal["fp32", "bf16"] = Field("fp32", description="how trained weights are stored: fp32 masters under autocast, or bf16 (less memory, no casts) with fp32 AdamW moments and stochastically rounded updates; needs bf16 precision")
    peak_tflops: float | None = Field(None, gt=0, description="the device's peak dense bf16 TFLOP/s for the MFU figure (null: from the built-in table of GPUs)")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: replicate the model (ddp) or shard it across processes (fsdp)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 where supported, fp16 with loss scaling on older CUDA, else fp32")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    seed: int = Field(42, description="seed for data order, dropout and initialisation; CPU runs repeat exactly")
    eval_every: int = Field(50, ge=1, description="evaluate on the validation split every this many steps")
    eval_max_blocks: int | None = Field(None, ge=1, description="cap on validation blocks per evaluation (null: all)")
    patience: int | None = Field(3, ge=1, description="stop after this many evaluations without improvement (null: never)")
    log_every: int = Field(10, ge=1, description="print a progress line every this many steps when not on a terminal")
    save_every: int | None = Field(None, ge=1, description="write a resumable checkpoint every this many steps (null: at each evaluation)")
    keep_last: int = Field(2, ge=1, description="resumable checkpoints kept on disk")
    memory_check: bool = Field(True, description="on a CPU, refuse before starting a run whose memory plan exceeds the memory available (the kernel would kill it); false: start it anyway")

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value


PROBE_WORDS = ("auto", "none")  # monitor.general_probe values that are not a file
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def benchmark_is_path(spec: str, base: Path) -> bool:
    """Whether a monitor.benchmarks entry names a task file or folder (read against `base`) rather than an lm-eval task."""
    return spec.endswith(TASK_FILE_SUFFIXES) or "/" in spec or spec.startswith((".", "~")) or os.path.lexists(base / spec)


def not_blank(value: str | None, fix: str) -> str | None:
    """A model named by a setting other than model.name: null leaves it out, blank is refused with `fix`; a path comes
    back in `one_spelling`."""
    if value is not None and not value.strip():
        raise ValueError(f"empty; {fix}")
    return one_spelling(value)


def not_a_switch(value: Any, meaning: str) -> Any:
    """A number setting that YAML's true or false would pass as 1 or 0."""
    if isinstance(value, bool):
        raise ValueError(f"{meaning}, or null; not true or false")
    return value


class MonitorConfig(Section):
    tensorboard: bool = Field(True, description="write TensorBoard event files to <run>/tb")
    mlflow: bool = Field(False, description="log to MLflow (needs the mlflow package)")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (null: a local file store in <run>/mlruns)")
    wandb: bool = Field(False, description="log to Weights & Biases (needs the wandb package)")
    wandb_mode: Literal["offline", "online"] = Field("offline", description="wandb stays offline unless set to online")
    wandb_project: str = Field("tunesmith", description="wandb project name")
    sample_prompts: list[str] | None = Field(None, description="prompts generated at each evaluation (null: beginnings of validation documents)")
    sample_count: int = Field(3, ge=0, description="how many validation beginnings to use when sample_prompts is null (0: no samples)")
    sample_tokens: int = Field(40, ge=1, description="tokens generated for each sample (greedy, so runs compare)")
    general_probe: str = Field("auto", description="what the model may forget, measured at each evaluation: auto: texts sampled once from the base model (monitor.drift_from's model when set; the teacher, for a student cut from it; cached per model), scored as drift_nats, the tuned model's extra nats per token on them (an estimate of its KL divergence from the base); a file of your general text: also scored as general_ppl; none: off")
    drift_from: str | None = Field(None, min_length=1, description="the model drift_nats is counted from (a model name, folder, .gguf file or finished run that shares the tokenizer): the probe (and data.replay) samples its text, and its own NLL on the probe is the zero, so a run that starts from an earlier run (a warm start) can hold monitor.max_drift to the original model; null: the model this run starts from")
    max_drift: float | None = Field(None, gt=0, allow_inf_nan=False, description="a forgetting budget: the best step is chosen only among evaluations whose drift_nats is at most this (nats per token from the base, or from monitor.drift_from's model, e.g. 0.5); one over it counts as no improvement for train.patience (none counts while no evaluation has been within it, as when the run starts over it); null: any drift")
    probe_tokens: int | None = Field(None, ge=64, description="tokens each part of the probe runs through the model at each evaluation, openings included (null: a tenth of the validation tokens, 256 to 32768, so it costs about a tenth of an evaluation)")
    benchmarks: list[str] = Field(default_factory=list, description="standard benchmarks scored through lm-evaluation-harness, e.g. [piqa, lambada_openai]: lm-eval task or group names, or task YAML files; into metrics.jsonl as bench/<task>/<metric>, summary.json (base and final), the report and diagnose's benchmark_regression")
    benchmark_limit: int = Field(300, ge=1, description="the first N items of each benchmark scored each time (a few hundred keep the cost small; the standard error says how precise the score is)")
    benchmark_every: Literal["end", "eval"] = Field("end", description="end: the base model before training and the final model; eval: also at every evaluation")

    @field_validator("max_drift", mode="before")
    @classmethod
    def _drift_not_a_switch(cls, value: Any) -> Any:
        return not_a_switch(value, "a drift in nats per token, e.g. 0.5")

    @field_validator("drift_from")
    @classmethod
    def _drift_from_named(cls, value: str | None) -> str | None:
        return not_blank(value, "name the model the drift is counted from, or leave drift_from out")

    @field_validator("general_probe")
    @classmethod
    def _general_probe_spelled_once(cls, value: str) -> str:
        return one_spelling(value)

    @model_validator(mode="after")
    def _drift_settings_need_the_probe(self) -> "MonitorConfig":
        if self.max_drift is not None and self.general_probe == "none":
            raise ValueError("max_drift holds the best step to the drift that monitor.general_probe measures, which is none; "
                             "set general_probe to auto or a file, or drop max_drift")
        if self.drift_from is not None and self.general_probe == "none":
            raise ValueError("drift_from names the model the drift is counted from, but monitor.general_probe is none, so no drift "
                             "is measured; set general_probe to auto or a file, or drop drift_from")
        return self


class OutputConfig(Section):
    dir: str | None = Field(None, description="run directory (default: runs/<name>)")
    name: str | None = Field(None, description="run name (default: run-<date>-<time>)")

    @field_validator("dir")
    @classmethod
    def _home_expanded(cls, value: str | None) -> str | None:
        """`~/runs/x` is a folder under the home folder, as a shell would read it, not a folder named `~` here."""
        return os.path.expanduser(value) if value else value
