"""Preference tuning: a chat model learns from chosen and rejected answers (DPO, ORPO) or thumbs up and down (KTO).

Records are read by `data/preferences.py`, rendered through the chat template as the chat task renders a
conversation, one stored example per answer with the loss mask on that answer and its end-of-turn marker.
The objectives are in `objectives.py`. DPO and KTO compare the model with a reference, the model before
training: by default its log-probabilities are computed once and stored beside the token files; otherwise
they come from the base with the adapters switched off (LoRA) or from a frozen copy (full, freeze).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from copy import deepcopy
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import CleanConfig, DataConfig, RunConfig
from ..data.clean import transforms
from ..data.pairs import PreferenceExamples
from ..data.preferences import CHOSEN, DESIRABLE, KL_ROW, UNDESIRABLE, judged_units
from ..data.report import DataReport
from ..data.units import Encoded, Unit
from ..errors import UserError
from ..rundir.fingerprint import folder_identity
from ..runtime import autocast
from .base import Task, TaskKind, check_both_sides
from .chat import ControlTextGuard, chat_reference_pairs, chat_sample_prompts, chat_tokenizer, encode_answer, end_of_turn, stop_token_ids
from .loss import Validation
from .objectives import Objective, PreferenceLoss, SequenceLogps, preference_metrics, without_dropout
from .view import TaskView

SHOWN = ("likelihood_accuracy", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "logp_margin",
         "chosen_logp_per_token", "rejected_logp_per_token", "chosen_reward", "rejected_reward", "desirable_reward",
         "undesirable_reward")


@torch.no_grad()
def score_rows(module: SequenceLogps, dataset: PreferenceExamples, batch_size: int, device: torch.device, precision: str,
               reference=None, limit: int | None = None) -> dict[str, np.ndarray]:
    """Summed answer log-probs of every stored example and KL row under `module` (and `reference`, when given)."""
    was_training = module.training
    module.eval()
    examples, items = len(dataset.examples), len(dataset)
    out = {"rows": np.full(examples, np.nan), "counts": np.zeros(examples), "kl": np.full(items, np.nan)}
    if reference is not None:
        out.update(ref_rows=np.full(examples, np.nan), ref_kl=np.full(items, np.nan))
    for indices in dataset.batches_by_length(batch_size, limit):
        batch = dataset.batch(indices).to(device)
        with autocast(device, precision):
            policy, counts = module.of(batch)
            ref = reference(batch) if reference is not None else None
        for r, (kind, index) in enumerate(dataset.rows(indices)):
            key = "rows" if kind == "example" else "kl"
            out[key][index] = float(policy[r])
            if kind == "example":
                out["counts"][index] = float(counts[r])
            if ref is not None:
                out[f"ref_{key}"][index] = float(ref[r])
    module.train(was_training)
    return out


def _same_rows(pieces: list[tuple[np.ndarray, np.ndarray, int]]) -> bool:
    """A pair whose answers differ only past data.block_size: cut there, chosen and rejected are the same row, which
    teaches nothing and puts a zero margin into the metrics."""
    return len(pieces) == 2 and np.array_equal(pieces[0][0], pieces[1][0]) and np.array_equal(pieces[0][1], pieces[1][1])


@dataclass(frozen=True)
class Reference:
    """The model before training, as DPO and KTO compare with it: log-probs computed once per split, or a function of a batch."""

    precomputed: dict[str, dict] | None = None  # split -> {"rows": ..., "kl": ...}
    per_batch: Callable | None = None


def _reference_model(model: torch.nn.Module, log) -> Callable:
    """Reference log-probs batch by batch: the base with the adapters off (LoRA), or a frozen copy of the model."""
    if hasattr(model, "disable_adapter"):
        return lambda batch: _adapters_off(model, SequenceLogps(model), batch)
    log("preference.precompute_reference false: holding a frozen copy of the model as the reference")
    frozen = SequenceLogps(without_dropout(deepcopy(model)).eval().requires_grad_(False))
    return lambda batch: frozen.of(batch)[0]


def _computed_references(objective: Objective, model, prepared, device, precision: str, batch_size: int, path: Path, log) -> dict:
    log("reference log-probabilities: computing them once, before training (the base model, one forward pass per answer)")
    module = SequenceLogps(model)
    with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
        scored = {split: score_rows(module, PreferenceExamples(prepared.split(split), objective.paired, None), batch_size, device,
                                    precision) for split in ("train", "val")}
    references = {split: {"rows": s["rows"], "kl": s["kl"]} for split, s in scored.items()}
    partial = path.with_suffix(f".{os.getpid()}.partial.npz")
    try:
        np.savez(partial, **{f"{split}_{key}": value for split, ref in references.items() for key, value in ref.items()})
        os.replace(partial, path)
        log(f"reference log-probabilities: computed for {len(scored['train']['rows']) + len(scored['val']['rows']):,} answers, "
            f"stored in {path}")
    except OSError as exc:  # a full disk costs the cache, not the run
        partial.unlink(missing_ok=True)
        log(f"reference log-probabilities: computed, but not stored ({exc.strerror or exc}); a later run computes them again")
    return references


def _reference_key(cfg: RunConfig, resolved, precision: str) -> str:
    """The reference's identity: the model's files, the precision, how weights are stored, and the rows' layout."""
    identity = {"model": resolved.path, "files": folder_identity(Path(resolved.path)), "precision": precision, "method": cfg.model.method,
                "weights": cfg.train.weights, "paired": Objective(cfg.preference).paired}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class PreferenceUnits:
    """Judged answers for `prepare`: one stored example per answer, rendered through the chat template."""

    layout = "examples"
    unit_words = "judged prompts"
    fields_hint = ("each record needs prompt, chosen and rejected fields (or chosen and rejected transcripts, or prompt, "
                   "completion and label for kto); map other names with chat.fields")

    def __init__(self, cfg: RunConfig):
        self.cfg, self.objective, self.truncated, self.control = cfg, Objective(cfg.preference), 0, ControlTextGuard()

    def cache_settings(self) -> dict:
        return {"task": "preference", "chat": self.cfg.chat.model_dump(mode="json"), "pairs_only": self.objective.paired}

    def begin(self, reader, files: list[Path]) -> None:
        pass

    def units(self, reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        return judged_units(reader(report), files, self.cfg.chat, report, transforms(clean), self.objective.paired,
                            self.objective.method)

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]:
        encoded = []
        for unit in units:
            answers = [{"role": "assistant", "content": answer} for answer, _ in unit.value.answers]
            if self.control.holds(tokenizer, unit.value.prompt + answers, unit.key, report):
                continue
            pieces, cut = [], 0
            for answer, code in unit.value.answers:
                ids, mask = encode_answer(tokenizer, unit.value.prompt, answer)
                cut += len(ids) > data.block_size
                pieces.append((ids[: data.block_size], mask[: data.block_size], code))
            if any(not mask.any() for _, mask, _ in pieces):
                report.remove("answer_beyond_block_size", unit.key)
                continue
            if _same_rows(pieces):
                report.remove("identical_after_truncation", unit.key)
                continue
            self.truncated += cut
            encoded.append(Encoded(unit, np.concatenate([ids for ids, _, _ in pieces]), pieces, [len(p[0]) for p in pieces]))
        return encoded

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        check_both_sides(train, val, "answers", eval_only)

        def counted(writer) -> dict:
            codes = np.asarray(writer.classes, dtype=np.int64)
            return {"pairs": int((codes == CHOSEN).sum()), "desirable": int((codes == DESIRABLE).sum()),
                    "undesirable": int((codes == UNDESIRABLE).sum())}

        counts = {"train": counted(train), "val": counted(val)}
        if self.objective.paired and counts["val"]["pairs"] == 0:
            raise UserError(f"the validation split holds no pairs; {self.objective.method} needs chosen and rejected answers")
        meta = {"task": "preference", "targets": {"train": train.targets, "val": val.targets}, "counts": counts,
                "examples_are": " (answers)"}
        self.control.finish(meta, report, "judged prompts")
        if self.truncated:
            meta["truncated"] = self.truncated
            report.warnings.append(f"{self.truncated} answers were cut at data.block_size={data.block_size}; raise it to keep them whole")
        return meta


class PreferenceTask(Task):
    """Judged answers to prompts; the loss is the preference method's, the metrics the likelihood preference accuracy
    and the implicit rewards."""

    eval_units = "pairs"
    target_words = "answer tokens"
    prompts_rendered = True

    def __init__(self, kind: TaskKind, cfg: RunConfig, meta: dict, reference: Reference | None = None):
        """Without a reference (a saved model measured on its own), the reference-free metrics only."""
        super().__init__(kind, cfg, meta)
        self.objective = Objective(cfg.preference)
        reference = reference or Reference()
        self.references, self.reference = reference.precomputed or {}, reference.per_batch

    # datasets and the loss
    def dataset(self, prepared, split: str, training: bool = False) -> PreferenceExamples:
        return PreferenceExamples(prepared.split(split), self.objective.paired, self.references.get(split))

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.model.dropout is None:
            without_dropout(model)
        return SequenceLogps(model)

    def training_loss(self, module: torch.nn.Module) -> PreferenceLoss:
        return PreferenceLoss(module, self.objective, self.reference)

    # evaluation
    def validation(self, model, dataset: PreferenceExamples, tokenizer, batch_size: int, device: torch.device, precision: str,
                   max_blocks: int | None = None, log=print) -> Validation:
        module = SequenceLogps(model)
        scored = score_rows(module, dataset, batch_size, device, precision, self.reference if dataset.reference is None else None,
                            max_blocks)
        reference = dataset.reference or ({"rows": scored["ref_rows"], "kl": scored["ref_kl"]} if "ref_rows" in scored else None)
        measured = min(len(dataset), max_blocks or len(dataset))
        used = [r for k in range(measured) for r in dataset.items[k]]
        loss = self._loss(dataset, scored, reference, used, measured)
        codes = dataset.codes
        metrics = preference_metrics(codes, scored["rows"], scored["counts"], reference["rows"] if reference else None,
                                     self.cfg.preference.beta, self.objective.method)
        metrics["pref_loss"] = loss
        tokens = int(scored["counts"][used].sum())
        return Validation(loss=loss, tokens=tokens, metrics=metrics)

    def _loss(self, dataset: PreferenceExamples, scored: dict, reference: dict | None, used: list[int], measured: int) -> float:
        if self.objective.needs_reference and reference is None:
            return math.nan  # a saved model measured without its base: the reference-free metrics only
        codes = dataset.codes[used]
        policy, counts = scored["rows"][used], scored["counts"][used]
        ref = reference["rows"][used] if reference else None
        if not self.objective.paired:
            kl = list(range(measured))
            codes = np.r_[codes, np.full(len(kl), KL_ROW)]
            policy, counts = np.r_[policy, scored["kl"][kl]], np.r_[counts, np.ones(len(kl))]
            ref = np.r_[ref, reference["kl"][kl]]
        as_tensor = lambda values: None if values is None else torch.as_tensor(values, dtype=torch.float64)  # noqa: E731
        losses = self.objective.losses(as_tensor(policy), as_tensor(counts), torch.as_tensor(codes), as_tensor(ref))
        return float(losses.mean())

    def score(self, result: Validation) -> float:
        return result.loss if math.isfinite(result.loss) else -result.metrics["likelihood_accuracy"]

    def eval_row(self, result: Validation) -> dict:
        return {"val_loss": result.loss, **{key: result.metrics[key] for key in SHOWN if key in result.metrics}}

    def progress_text(self, result: Validation) -> str:
        m = result.metrics
        margin = f"  margin {m['reward_margin']:.3f}" if "reward_margin" in m else ""
        return f"val loss {result.loss:.4f}  pref acc {m['likelihood_accuracy']:.1%}{margin}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        m = result.metrics
        return [f"base model: likelihood preference accuracy {m['likelihood_accuracy']:.1%} over {m['pairs']} validation pairs; "
                f"log-prob chosen {m['chosen_logp']:.2f}, rejected {m['rejected_logp']:.2f}; {self.objective.method} loss {result.loss:.4f}"]

    # what is saved and reported
    def spec(self, tokenizer) -> dict:
        return {"task": self.name, "method": self.objective.method, "end_of_turn": end_of_turn(tokenizer)}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        best = best_metrics or base_metrics
        out = {"task": self.name, "preference_method": self.objective.method, "beta": self.cfg.preference.beta, "pairs": best["pairs"]}
        for key in SHOWN:
            if key in best:
                out[key], out[f"base_{key}"] = best[key], base_metrics.get(key)
        return out

    def sample_prompts(self, monitor, val_dataset, tokenizer) -> list[str]:
        return chat_sample_prompts(monitor, val_dataset, tokenizer)

    def sample_stops(self, tokenizer) -> list[int]:
        return stop_token_ids(tokenizer)

    def reference_pairs(self, val_dataset, tokenizer, count: int, new_tokens: int) -> list[tuple[list[int], str]]:
        return chat_reference_pairs(val_dataset, tokenizer, count)


class PreferenceKind(TaskKind):
    """Preference tuning as the config decides it: its objective's reference, computed before training where it needs one."""

    builds = PreferenceTask
    name = "preference"
    learns = "chosen and rejected answers, or thumbs up and down, to tune a chat model"
    section = "preference"
    also_reads = ("chat",)
    packings = ("padded",)
    rows_per_example = 2  # chosen and rejected; for KTO the answer and its KL row

    def frozen_copies(self, cfg: RunConfig) -> int:
        held = Objective(cfg.preference).needs_reference and not cfg.preference.precompute_reference
        return int(held and cfg.model.method not in ("lora", "qlora"))

    def for_saved(self, spec: dict, cfg: RunConfig) -> RunConfig:
        method = spec.get("method", cfg.preference.method)
        return cfg.model_copy(update={"preference": cfg.preference.model_copy(update={"method": method})})

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> PreferenceUnits:
        return PreferenceUnits(cfg)

    def tokenizer(self, resolved, log=print):
        return chat_tokenizer(resolved, log)

    def reference(self, cfg: RunConfig, meta: dict, model: torch.nn.Module, prepared, resolved, device: torch.device,
                  precision: str, batch_size: int, log=print) -> Reference | None:
        """The reference: its log-probs computed once (or read back from beside the token files), or a way to compute
        them batch by batch; None for an objective without one (ORPO)."""
        objective = Objective(cfg.preference)
        if not objective.needs_reference:
            return None
        if not cfg.preference.precompute_reference:
            return Reference(per_batch=_reference_model(model, log))
        path = Path(prepared.directory) / f"reference-{_reference_key(cfg, resolved, precision)}.npz"
        stored = _read_references(path, {split: _reference_shape(PreferenceExamples(prepared.split(split), objective.paired, None))
                                         for split in ("train", "val")}, log) if path.is_file() else None
        return Reference(precomputed=stored or
                         _computed_references(objective, model, prepared, device, precision, batch_size, path, log))


def _reference_shape(dataset: PreferenceExamples) -> dict[str, tuple[int]]:
    """The arrays `score_rows` gives for `dataset`: one log-prob per stored example, and one per row for KL."""
    return {"rows": (len(dataset.examples),), "kl": (len(dataset),)}


def _read_references(path: Path, shapes: dict, log) -> dict | None:
    """Reference log-probs stored by an earlier run; None when the file is damaged (unreadable, or arrays that are not
    one log-probability per answer of the prepared data)."""
    try:
        with np.load(path) as saved:
            references = {split: {"rows": saved[f"{split}_rows"], "kl": saved[f"{split}_kl"]} for split in ("train", "val")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        references = None
    if references is None or any(not _log_probs(array, shapes[split][key], unscored=(key == "kl"))
                                 for split, arrays in references.items() for key, array in arrays.items()):
        log(f"reference log-probabilities: {path} is damaged; computing them again")
        return None
    log(f"reference log-probabilities: {path} (computed before)")
    return references


def _log_probs(array: np.ndarray, shape: tuple, unscored: bool) -> bool:
    """Whether `array` can be summed log-probabilities of `shape`: floats, none above zero, none infinite, and none
    missing (NaN) unless `unscored` rows may be (the KL rows of a task that has none)."""
    if array.shape != shape or array.dtype.kind != "f":
        return False
    known = array[~np.isnan(array)] if unscored else array
    return bool(np.all(np.isfinite(known)) and np.all(known <= 1e-4))


def _adapters_off(model, module: SequenceLogps, batch) -> torch.Tensor:
    """The base model's log-probs: the same weights with the LoRA adapters switched off, no gradient."""
    with torch.no_grad(), model.disable_adapter():
        return module.of(batch)[0]


class PreferenceView(TaskView):
    """How a preference run's results read."""

    name = "preference"
    try_it = "chat"
    loss_scope = "preference "
    headline = ("likelihood_accuracy", "preference accuracy", True)
    description = "A chat model tuned from preferences"

    def result_lines(self, summary: dict) -> list[str]:
        lines = [f"likelihood preference accuracy {summary['base_likelihood_accuracy']:.1%} (base) -> "
                 f"{summary['likelihood_accuracy']:.1%} (best, step {summary['best_step']}) over {summary['pairs']} validation pairs; "
                 f"stopped: {summary['stopped_because']}",
                 f"log-prob of the chosen answers {summary['base_chosen_logp']:.2f} -> {summary['chosen_logp']:.2f}, "
                 f"of the rejected {summary['base_rejected_logp']:.2f} -> {summary['rejected_logp']:.2f}"]
        if "reward_accuracy" in summary:
            lines.append(f"implicit reward accuracy {summary['reward_accuracy']:.1%}, margin {summary['reward_margin']:.3f}")
        return lines

    def eval_lines(self, result) -> list[str]:
        m = result.metrics
        loss = f"; {self.loss_scope}loss {result.loss:.4f}" if math.isfinite(result.loss) else ""
        return [f"{result.model}: likelihood preference accuracy {m['likelihood_accuracy']:.1%} over {m['pairs']} pairs; "
                f"answer log-prob chosen {m['chosen_logp']:.2f}, rejected {m['rejected_logp']:.2f}{loss}  ({result.tokens:,} answer tokens)"]

    def eval_change(self, first, second) -> str:
        change = second.metrics["likelihood_accuracy"] - first.metrics["likelihood_accuracy"]
        return f"likelihood preference accuracy change from {first.model} to {second.model}: {100 * change:+.1f} points"

    def comparison_rows(self, summary: dict) -> list[tuple[str, float, float]]:
        return [(name, summary.get(f"base_{key}"), summary.get(key)) for name, key in (
            ("likelihood preference accuracy", "likelihood_accuracy"), ("chosen answers' log-prob", "chosen_logp"),
            ("rejected answers' log-prob", "rejected_logp"), ("implicit reward accuracy", "reward_accuracy"),
            ("implicit reward margin", "reward_margin")) if key in summary]

    def describe(self, spec: dict) -> str:
        return f"A chat model tuned from preferences ({spec.get('method', 'dpo').upper()})"
