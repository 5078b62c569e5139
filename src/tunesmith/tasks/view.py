"""How a task's results read: what the CLI prints, the report and the model card write, and the page shows.

A view reads saved files (summary.json, a model's tunesmith_task.json, `tunesmith eval`'s results) and holds no run
state; each task module has one beside its Task, registered in `VIEWS`.
"""

from __future__ import annotations


class TaskView:
    """Plain language modelling's view; a task's own view changes what differs."""

    name = "lm"
    headline = ("val_ppl", "val perplexity", False)  # metrics.jsonl key, its name, higher is better
    summary_headline = None  # the headline's key in summary.json (its base value under base_<key>) where not the same
    try_it = "generate"  # how the web page tries a finished model: generate, chat, classify or score (a reward model)
    description = "A causal language model"  # the model card's first words
    loss_scope = ""  # how a printed loss or perplexity is qualified ("assistant-token ")
    rewarded = False  # try-it scores a generation with the run's rewards (GRPO)
    writes_text = True  # the model's output is text, not a class or a score

    def result_lines(self, summary: dict) -> list[str]:
        """The run's outcome in a few lines, from its summary.json."""
        return [f"{self.loss_scope}validation perplexity {summary['base_val_ppl']:.2f} (base) -> {summary['best_val_ppl']:.2f} "
                f"(best, step {summary['best_step']}); stopped: {summary['stopped_because']}"]

    def eval_lines(self, result) -> list[str]:
        """`tunesmith eval`'s lines for one model's `evaluation.EvalResult`."""
        return [f"{result.model}: {self.loss_scope}loss {result.loss:.4f}  perplexity {result.perplexity:.2f}  "
                f"accuracy {result.accuracy:.1%}  ({result.tokens:,} tokens)"]

    def eval_change(self, first, second) -> str:
        """`tunesmith eval --compare`'s verdict on two models' results. Models with different tokenizers have perplexities
        per different units; the loss summed over the whole text compares."""
        if first.tokenizer != second.tokenizer:
            total = [result.loss * result.tokens for result in (first, second)]
            return (f"{first.model} and {second.model} have different tokenizers ({first.tokens:,} and {second.tokens:,} tokens "
                    f"scored), so their perplexities do not compare; their loss summed over the text each scored is the nearer "
                    f"measure: {total[0]:,.0f} and {total[1]:,.0f} nats ({total[1] / total[0] - 1:+.1%})")
        return f"perplexity change from {first.model} to {second.model}: {second.perplexity / first.perplexity - 1:+.1%}"

    def comparison_rows(self, summary: dict) -> list[tuple[str, float, float]]:
        """Rows (name, base, fine-tuned) the report puts above the loss."""
        return []

    def describe(self, spec: dict) -> str:
        return self.description

    def saved_with_head(self, spec: dict) -> bool:
        """Whether a model saved with `spec` is a classifier with a head (which has no GGUF form)."""
        return False
