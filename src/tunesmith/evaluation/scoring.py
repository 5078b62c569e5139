"""Evaluation: the loss, perplexity and task metrics of a model on a dataset; training and `tunesmith eval` both call it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import prepare_data, prepare_eval_data
from ..data.tokens import tokenizer_fingerprint
from ..errors import UserError
from ..models import context_length, fit_embeddings, load_model, resolve_model, tunesmith_home
from ..runtime import pick_device, pick_precision
from ..tasks import Task, saved_task
from ..tasks.loss import Validation


def _say_removed(report: dict, log) -> None:
    """One line naming what the data's cleaning left out of the evaluation (rows of labels the model has not, or that
    are no conversation, too short ...), so a figure is never read as the whole file's."""
    removed = [f"{row['removed']:,} as {row['step'].replace('_', ' ')}" for row in report.get("steps", []) if row.get("removed")]
    if removed:
        log(f"data: {report.get('documents_read', 0):,} read; left out: {', '.join(removed)}; the figures are on the other "
            f"{report.get('documents_kept', 0):,}")


def evaluate(task: Task, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
             max_blocks: int | None = None, log=print) -> Validation:
    """The task's validation: its loss and metrics."""
    return task.validation(model, dataset, tokenizer, batch_size, device, precision, max_blocks, log)


@dataclass(frozen=True)
class EvalResult:
    model: str
    loss: float
    perplexity: float
    tokens: int
    block_size: int
    accuracy: float
    task: str = "lm"
    metrics: dict | None = None  # the task's: classify's accuracy, macro-F1, per class, confusion; preference's accuracy, log-probs
    generation: dict | None = None  # with --generate: ROUGE-L and chrF of greedy generations against the data's own text
    speed: dict | None = None  # with --compare: how fast it does its task here (`Task.throughput`)
    tokenizer: str = ""  # its tokenizer's fingerprint: perplexities of models whose tokenizers differ do not compare

    def as_dict(self) -> dict:
        return asdict(self)

    def speed_line(self) -> str:
        s = self.speed
        return (f"{self.model}: {s['per_s']:,.1f} {s['unit']}/s ({s['use']}, {s['count']} validation "
                f"{'prompts' if s['use'] == 'generate' else 'rows'}, batch {s['batch']}; the median of {s['timings']} "
                f"timings from {s['spread'][0]:,.1f} to {s['spread'][-1]:,.1f} on this machine)")

    def generation_line(self) -> str:
        g = self.generation
        return (f"{self.model}: {g['prompts']:,} validation prompts continued greedily ({g['new_tokens']} new tokens): "
                f"ROUGE-L {g['rouge_l']:.2f}, chrF {g['chrf']:.2f} against the data's own text")


def generation_scores(task: Task, model, tokenizer, examples, count: int, new_tokens: int, device: torch.device,
                      precision: str) -> dict:
    """Greedy generations for up to `count` validation prompts, scored against what the data says next."""
    from ..inference.generation import SamplingOptions, generate_many
    from ..inference.text_metrics import corpus_scores
    from ..runtime import autocast

    pairs = task.reference_pairs(examples, tokenizer, count, new_tokens)
    if not pairs:
        raise UserError(f"--generate: the {task.name} task has no validation text to generate against "
                        "(a classifier's accuracy is its measure; lm needs documents longer than its prompt)")
    with autocast(device, precision):
        done = generate_many(model, tokenizer, [prompt for prompt, _ in pairs], SamplingOptions(max_new_tokens=new_tokens, temperature=0),
                             task.sample_stops(tokenizer))
    texts, references = [c[0].text.strip() for c in done], [reference for _, reference in pairs]
    examples_shown = [{"prompt": tokenizer.decode(prompt, skip_special_tokens=True)[-300:], "reference": reference, "generated": text}
                      for (prompt, reference), text in list(zip(pairs, texts))[:5]]
    return {**corpus_scores(texts, references), "prompts": len(pairs), "new_tokens": new_tokens, "examples": examples_shown}


def greedy_decoder(model, tokenizer):
    """`Task.throughput`'s decoder: greedy continuations of token-id prompts through the decoding engine; the tokens made."""
    from ..inference.generation import SamplingOptions, generate_many

    def decode(prompts: list[list[int]], new_tokens: int, stop_ids: list[int], batch: int) -> int:
        done = generate_many(model, tokenizer, prompts, SamplingOptions(max_new_tokens=new_tokens, temperature=0), stop_ids, batch)
        return sum(completions[0].tokens for completions in done)

    return decode


def evaluate_model(spec: str, data: list[str] | None, cfg: RunConfig, log=print, generate: int = 0, new_tokens: int = 64,
                   speed: bool = False) -> EvalResult:
    """Evaluate `spec` (model, .gguf, or run directory) on every unit of `data`, the way its task measures it;
    without `data`, on the validation split that `cfg` (a run's saved config) makes.

    A chat model (or `--task chat`) is measured on the assistant turns of conversations; a classifier
    on labelled rows, with its label set. With `generate`, that many validation prompts are also
    continued greedily and scored against the data (ROUGE-L, chrF).
    """
    resolved = resolve_model(spec, cfg.model.trust_remote_code, log=log)
    kind, cfg, saved = saved_task(Path(resolved.path), cfg, spec)
    tokenizer = kind.tokenizer(resolved, log=log)
    model = load_model(resolved, classifier=kind.has_head(cfg))
    fit_embeddings(model, tokenizer)
    context = context_length(model.config)
    if generate and context and new_tokens >= context:  # refused before the data is scored
        raise UserError(f"--max-new-tokens {new_tokens}: this model's context of {context} tokens holds the prompt and its "
                        "continuation together; ask for fewer new tokens")
    block_size = min(cfg.data.block_size, context or cfg.data.block_size)
    data_cfg = cfg.data.model_copy(update={"block_size": block_size, "replay": 0.0})  # rehearsal text never reaches validation
    if data:
        prepared = prepare_eval_data(data, data_cfg, cfg.clean, tokenizer, tunesmith_home(), task=kind.preparer(cfg, saved))
        _say_removed(prepared.report, log)
    else:
        prepared = prepare_data(data_cfg, cfg.clean, tokenizer, tunesmith_home(), task=kind.preparer(cfg, saved))
    task = kind.build(cfg, prepared.meta)
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    model.to(device)
    examples = task.dataset(prepared, "val")
    batch_size = cfg.train.eval_batch_size or (cfg.train.micro_batch_size if isinstance(cfg.train.micro_batch_size, int) else 4)
    result = evaluate(task, model, examples, tokenizer, batch_size, device, precision, log=log)
    generation = generation_scores(task, model, tokenizer, examples, generate, new_tokens, device, precision) if generate else None
    timed = task.throughput(model.eval(), examples, tokenizer, device, precision, batch_size, greedy_decoder(model, tokenizer)) \
        if speed else None
    return EvalResult(spec, result.loss, result.perplexity, result.tokens, block_size, result.accuracy, task.name, result.metrics or None,
                      generation, timed or None, tokenizer_fingerprint(tokenizer))


def record_generation(run_dir: Path, result: EvalResult, data) -> None:
    """`eval RUN --generate`'s figures in the run, where the report finds them."""
    from ..rundir.durable import write_atomically
    from ..rundir.folder import GENERATION_EVAL

    write_atomically(run_dir / GENERATION_EVAL, json.dumps({"data": data, **result.generation}, indent=2) + "\n")
