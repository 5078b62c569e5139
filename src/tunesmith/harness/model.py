"""The model a benchmark scores, as tunesmith loads it: a model directory or hub id, a run (its final/, or a LoRA run's
adapters on its base, unmerged), a .gguf file or the embedded default; handed to lm-eval as an object, never saved again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError, first_line
from ..models import damaged_model_error, fit_embeddings, load_model, load_tokenizer, resolve_model
from ..rundir.folder import CONFIG_FILE, config_section, is_run_dir, read_yaml_object
from ..runtime import pick_device, pick_precision
from ..tasks import read_task, task_view

ADAPTER_DIR = "final-adapter"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchmarkModel:
    """A loaded language model with its tokenizer, where and in what precision it runs, and what it is (for --output)."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str  # fp32, bf16 or fp16: autocast's, over weights kept as loaded
    description: dict

    def harness_lm(self, batch_size: int = 16):
        """lm-eval's HFLM around this model, batched; its forward passes run under autocast in the model's precision."""
        from .lm import ContinuationLM

        return ContinuationLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size, backend="causal",
                              mixed_precision_dtype=DTYPES.get(self.precision))


def _run_settings(run: Path) -> dict:
    """The run's saved config, which says how its model loads (its base, its precision): a damaged one is refused, not
    guessed around, since a guess would change the benchmark's figures without saying so."""
    settings = read_yaml_object(run / CONFIG_FILE)
    if (run / CONFIG_FILE).is_file() and not settings:
        raise UserError(f"{run / CONFIG_FILE} is damaged (not a YAML mapping); restore it, or benchmark {run}/final instead")
    return settings


def _check_language_model(directory: Path, spec: str) -> None:
    saved = read_task(directory)
    if task_view(saved.get("task")).saved_with_head(saved):
        raise UserError(f"{spec} is a classifier with a head, which writes no text for a benchmark to score; "
                        "benchmark its base model, or a run trained with --task lm or chat")


def _unmerged_adapter(run: Path, settings: dict, trust_remote_code: bool, log):
    """A LoRA run's base model with its adapters on top, as they trained: no merged copy is made."""
    from peft import PeftModel

    base_spec = config_section(settings, "model").get("name")
    if not base_spec:
        raise UserError(f"{run}: its config.yaml names no model.name to put the adapters on; benchmark {run}/final instead")
    base = resolve_model(base_spec, trust_remote_code, log=log)
    tokenizer = load_tokenizer(resolve_model(str(run), trust_remote_code, log=log) if (run / "final").is_dir() else base)
    model = load_model(base)
    fit_embeddings(model, tokenizer)  # as the run did before adding the adapters, so that saved embeddings fit
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, str(run / ADAPTER_DIR)), tokenizer, base_spec
    except Exception as exc:
        if not isinstance(exc, (SafetensorError, OSError, ValueError)) and damaged_model_error(exc, "") is None:
            raise
        raise UserError(f"{run / ADAPTER_DIR}: the adapter is damaged or does not fit {base_spec} ({first_line(exc, 200)}); "
                        f"restore it from the run, or benchmark {run}/final instead") from None


def load_for_benchmarks(spec: str, device: str = "auto", precision: str | None = None, trust_remote_code: bool = False,
                        log=print) -> BenchmarkModel:
    """The model of `spec` ready for lm-eval; `precision` None means the run's own (train.precision), or auto for a model."""
    local = Path(os.path.expanduser(spec))
    run = local if local.is_dir() and (is_run_dir(local) or (local / CONFIG_FILE).is_file()) else None
    settings = _run_settings(run) if run else {}
    place = pick_device(device)
    chosen = pick_precision(precision or config_section(settings, "train").get("precision", "auto"), place)
    description = {"spec": spec, "precision": chosen, "device": place.type}
    if run is not None and (run / "final").is_dir():
        _check_language_model(run / "final", spec)
    if run is not None and (run / ADAPTER_DIR / "adapter_config.json").is_file():
        model, tokenizer, base_spec = _unmerged_adapter(run, settings, trust_remote_code, log)
        description.update(kind="lora run, adapters unmerged", base=base_spec, adapter=str(run / ADAPTER_DIR))
    else:
        resolved = resolve_model(spec, trust_remote_code, log=log)
        _check_language_model(Path(resolved.path), spec)
        tokenizer = load_tokenizer(resolved)
        model = load_model(resolved)  # never resized to the tokenizer: untrained rows would take probability from every token
        description.update(kind="run" if run else "model", path=resolved.path)
    description["parameters"] = sum(p.numel() for p in model.parameters())
    return BenchmarkModel(model.to(place).eval(), tokenizer, place, chosen, description)
