"""`recommend`'s memory estimate beside the measured peak of real training runs, and its speed estimate beside the measured one.

Each run trains a few steps on the bundled example corpus; the measured peak is that of tensor memory
(the profiler's allocation records on CPU, the allocator's peak on CUDA), the estimate that of the
simulated step, by part. The tiny models are built from configs, as in the tests:

    python benchmarks/bench_memory.py [--steps 6] [--skip-embedded]

Tokens/s is that of the steps after the first (which warms up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CORPUS = ROOT / "src" / "tunesmith" / "examples" / "lumora_support.jsonl"


def measure(model: str, shape, method: str, micro_batch: int, block_size: int, steps: int, out: Path) -> dict:
    from rich.console import Console

    from tunesmith.api import prepare
    from tunesmith.config import load_config
    from tunesmith.planning.measure import peak_tensor_bytes
    from tunesmith.planning.memory import StepShape, fit_memory, trained_layers
    from tunesmith.planning.throughput import device_rate, tokens_per_second
    from tunesmith.training import train_run
    from tunesmith.runtime import pick_device, pick_precision

    overrides = [("model.name", model), ("model.method", method), ("data.train", [str(CORPUS)]), ("data.block_size", block_size),
                 ("train.micro_batch_size", micro_batch), ("train.max_steps", steps), ("train.eval_every", steps),
                 ("train.eval_max_blocks", 4), ("monitor.sample_count", 0), ("monitor.tensorboard", False), ("output.dir", str(out))]
    if method == "freeze":
        overrides.append(("model.train_last_layers", trained_layers(shape, "freeze")))
    cfg = load_config(None, overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        prepare(cfg)
    device = pick_device("auto")
    precision = pick_precision("auto", device)
    quiet = Console(file=io.StringIO())
    summary, measured = peak_tensor_bytes(lambda: train_run(cfg, console=quiet), device)
    memory = fit_memory(shape, StepShape(method, block_size, precision))
    speed = tokens_per_second(shape, memory.params, memory.trainable, method, block_size, device_rate(device, precision))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["tokens_per_s"] for row in rows if "tokens_per_s" in row][1:] or [summary["tokens_per_s"]]  # past the warm-up
    return {"measured": measured, "estimate": memory.estimate(micro_batch), "tok_s": sum(steps) / len(steps), "tok_s_estimate": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()

    from transformers import AutoConfig

    from conftest import build_tiny_model
    from tunesmith.planning.candidates import candidate

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cases = []
        for kind in ("gpt2", "llama"):
            path = build_tiny_model(kind, root / kind)
            cases += [(f"tiny {kind}", str(path), AutoConfig.from_pretrained(path), method, 4, 64) for method in ("full", "lora", "freeze")]
        if not args.skip_embedded:
            shape = candidate("smollm2-135m").config
            cases += [("smollm2-135m", "smollm2-135m", shape, method, 4, 256) for method in ("full", "lora", "freeze")]
        print(f"{'model':<14} {'method':<7} {'batch':>7} {'measured MB':>12} {'estimate MB':>12} {'error':>7}   "
              f"{'weights':>8} {'grads':>7} {'optim':>7} {'activ.':>7}   {'tok/s':>6} {'est.':>6}")
        results = []
        for number, (label, model, shape, method, micro, block) in enumerate(cases):
            row = measure(model, shape, method, micro, block, args.steps, root / f"run{number}")
            e, mb = row["estimate"], 2**20
            error = e.total / row["measured"] - 1
            speed = "-" if label.startswith("tiny") else f"{row['tok_s_estimate']:.0f}"  # tiny steps are all overhead
            print(f"{label:<14} {method:<7} {f'{micro}x{block}':>7} {row['measured'] / mb:>12.1f} {e.total / mb:>12.1f} {error:>+7.1%}   "
                  f"{e.weights / mb:>8.1f} {e.gradients / mb:>7.1f} {e.optimizer / mb:>7.1f} {e.activations / mb:>7.1f}   "
                  f"{row['tok_s']:>6.0f} {speed:>6}", flush=True)
            results.append({"model": label, "method": method, "measured": row["measured"], "estimate": e.total, "error": error})
        worst = max(results, key=lambda r: abs(r["error"]))
        print(f"largest error: {worst['error']:+.1%} ({worst['model']}, {worst['method']}); target: within 25%")
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
