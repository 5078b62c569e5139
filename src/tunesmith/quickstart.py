"""The main job: fine-tune the embedded default on the bundled Lumora support articles, before and after."""

from __future__ import annotations

import datetime as _dt
import time
from importlib.resources import files

from rich.console import Console

from .api import train
from .config import RunConfig
from .inference.generation import SamplingOptions, generate_text, load_generator

EXAMPLE_CORPUS = files("tunesmith") / "examples" / "lumora_support.jsonl"
PROMPT = "Connect the Lumora Hub to a new Wi-Fi network\n\n"

QUICKSTART_SETTINGS = {
    "model": {"name": "smollm2-135m"},
    "data": {"train": [str(EXAMPLE_CORPUS)], "block_size": 256},
    "train": {"lr": 1e-4, "epochs": 2, "max_steps": 40, "warmup_steps": 4, "micro_batch_size": 4,
              "eval_every": 10, "patience": 2, "save_every": 1000},
    "output": {"dir": f"runs/quickstart-{_dt.datetime.now():%Y%m%d-%H%M%S}"},
}


def _continuation(spec: str, cfg: RunConfig, console: Console) -> str:
    model, tokenizer = load_generator(spec, cfg.train.device, log=console.print)
    text = generate_text(model, tokenizer, PROMPT, SamplingOptions(max_new_tokens=48, temperature=0))
    return " ".join(text.split())


def run_quickstart(cfg: RunConfig, console: Console | None = None) -> dict:
    console = console or Console(highlight=False, soft_wrap=True, markup=False)
    started = time.perf_counter()
    console.print(f"tunesmith quickstart: fine-tune {cfg.model.name} on {len(cfg.data.train)} example file(s)")
    before = _continuation(cfg.model.name, cfg, console)
    summary = train(cfg, console=console)
    after = _continuation(summary["final_dir"], cfg, console)
    change = summary["best_val_ppl"] / summary["base_val_ppl"] - 1
    prompt = PROMPT.strip()
    forgetting = summary["forgetting"]
    kept = (f"general language kept: {forgetting['best_drift_nats']:.3f} nats per token from the base model on its own text "
            f"({forgetting['best_retained_ppl_ratio']:.0%} of its fit retained)\n" if "best_drift_nats" in forgetting else "")
    console.print(
        f"\nDone in {time.perf_counter() - started:.0f}s.\n"
        f"validation perplexity: base {summary['base_val_ppl']:.2f} -> fine-tuned {summary['best_val_ppl']:.2f} ({change:+.0%})\n"
        f"{kept}"
        f"prompt: {prompt}\n"
        f"  before: {before}\n"
        f"  after:  {after}\n"
        f"run directory: {summary['run_dir']} (final model in {summary['final_dir']}, report in report.html)\n\n"
        "Next, on your own text:\n"
        "  tunesmith init my-run.yaml                      # a commented config\n"
        "  tunesmith prepare --data my_texts/              # check what the data becomes\n"
        "  tunesmith train --data my_texts/ --out runs/mine\n"
        "  tunesmith generate runs/mine --prompt \"...\"\n"
        "  tunesmith ui                                    # every run in runs/ in the browser: curves, compare, new runs"
    )
    return summary
