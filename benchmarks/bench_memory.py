"""`recommend`'s memory estimate beside the measured peaks of real training runs, and its speed estimate beside the measured one.

Each row trains a few steps on the bundled example corpus, twice: in this process, where the measured
peak is that of tensor memory (the profiler's allocation records on CPU, the allocator's peak on CUDA),
set against the simulated step; and as `tunesmith train` in a process of its own, whose peak resident
memory (RSS) is set against the estimate `recommend` makes on a CPU (the tensors plus the process, see
`planning.memory.as_resident`). The tiny models are built from configs, as in the tests:

    python benchmarks/bench_memory.py [--steps 6] [--skip-tiny] [--skip-embedded] [--block-size 256] [--rss-only]
                                      [--large [--large-model DIR]] [--precision fp32]

--large adds a randomly initialized 1.17B Llama (TinyLlama's shape with SmolLM2's tokenizer, saved in
bf16, built from its config: nothing is downloaded) for 2 steps of 4 x 128 tokens a method, measured by
RSS only. Its full fine-tuning needs about 19 GiB: a row whose estimate does not fit in the memory
available less 3 GiB runs at micro-batch 1, and every large row is stopped once its RSS passes the
available memory less 3 GiB (printed as ">N"), so that it fails on its own, never through the kernel.
Tokens/s is that of the steps after the first (which warms up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
CORPUS = ROOT / "src" / "tunesmith" / "examples" / "lumora_support.jsonl"
SPARE = 3 * 2**30  # memory left to the machine's other programs while a large row runs
LARGE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
             vocab_size=49152, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2)  # TinyLlama-1.1B's shape, SmolLM2's vocabulary: 1,170,302,976 parameters


def build_large(directory: Path) -> Path:
    """The 1.17B Llama, random weights saved in bf16, with the embedded default's tokenizer (run in a child process)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunesmith.models.resolve import resolve_model

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**LARGE), dtype=torch.bfloat16).save_pretrained(directory)
    tokenizer = Path(resolve_model("smollm2-135m", log=lambda _m: None).path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, directory / name)
    return directory


def overrides(model: str, shape, method: str, micro_batch: int, block_size: int, steps: int, precision: str, out: Path) -> list:
    from tunesmith.planning.memory import trained_layers

    settings = [("model.name", model), ("model.method", method), ("data.train", [str(CORPUS)]), ("data.block_size", block_size),
                ("train.micro_batch_size", micro_batch), ("train.max_steps", steps), ("train.eval_every", steps),
                ("train.eval_max_blocks", 4), ("train.precision", precision), ("monitor.sample_count", 0),
                ("monitor.tensorboard", False), ("monitor.general_probe", "none"), ("output.dir", str(out))]
    if method == "freeze":
        settings.append(("model.train_last_layers", trained_layers(shape, "freeze")))
    return settings


def measure_tensors(settings: list) -> int:
    """The peak of tensor memory of the run, in this process (its tokenizing done before, outside the measurement)."""
    from rich.console import Console

    from tunesmith.api import prepare
    from tunesmith.config import load_config
    from tunesmith.planning.measure import peak_tensor_bytes
    from tunesmith.runtime import pick_device
    from tunesmith.training import train_run

    cfg = load_config(None, settings)
    with contextlib.redirect_stdout(io.StringIO()):
        prepare(cfg)
    _, measured = peak_tensor_bytes(lambda: train_run(cfg, console=Console(file=io.StringIO())), pick_device("auto"))
    return measured


def measure_rss(settings: list, out: Path, limit: float | None) -> tuple[float, bool, list[float]]:
    """Peak RSS in bytes of `tunesmith train` with these settings in a process of its own, whether it was stopped at
    `limit`, and the tokens/s of its steps after the first."""
    from peak_rss import run_with_peak_rss

    command = [sys.executable, "-m", "tunesmith", "train"]
    for key, value in settings:
        command += ["--data", value[0]] if key == "data.train" else ["--set", f"{key}={value}"]
    command += ["--set", "train.memory_check=false"]  # the cap stops a row that does not fit, and shows how far it got
    code, _, stderr, peak_mb = run_with_peak_rss(command, quiet_stdout=True, limit_mb=limit / 2**20 if limit else None)
    stopped = "stopped: resident memory passed the limit" in stderr
    if code and not stopped:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return peak_mb * 2**20, stopped, [row["tokens_per_s"] for row in rows if "tokens_per_s" in row][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--block-size", type=int, default=256, help="of the embedded default's rows")
    parser.add_argument("--rss-only", action="store_true", help="measure the process alone, not also the tensors in this process")
    parser.add_argument("--large", action="store_true", help="add the 1.17B rows (RSS only; about 20 GiB free for full)")
    parser.add_argument("--large-model", help="a directory already built by --large, to skip building it")
    parser.add_argument("--precision", default="auto", help="train.precision of every row (auto: bf16 where the CPU has it)")
    parser.add_argument("--build-large", help=argparse.SUPPRESS)  # the child process that builds the 1.17B model
    args = parser.parse_args()
    if args.build_large:
        build_large(Path(args.build_large))
        return

    import psutil
    from transformers import AutoConfig

    from conftest import build_tiny_model
    from tunesmith.planning.candidates import candidate
    from tunesmith.planning.memory import StepShape, as_resident, fit_memory
    from tunesmith.planning.throughput import device_rate, tokens_per_second
    from tunesmith.runtime import pick_device, pick_precision

    device = pick_device("auto")
    precision = pick_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cases = []  # label, model, config, method, micro-batch, block size, steps, large
        if not args.skip_tiny:
            for kind in ("gpt2", "llama"):
                path = build_tiny_model(kind, root / kind)
                cases += [(f"tiny {kind}", str(path), AutoConfig.from_pretrained(path), m, 4, 64, args.steps, False)
                          for m in ("full", "lora", "freeze")]
        if not args.skip_embedded:
            shape = candidate("smollm2-135m").config
            cases += [("smollm2-135m", "smollm2-135m", shape, m, 4, args.block_size, args.steps, False) for m in ("full", "lora", "freeze")]
        if args.large:
            large = Path(args.large_model) if args.large_model else root / "llama-1.17b"
            if not args.large_model:
                subprocess.run([sys.executable, __file__, "--build-large", str(large)], check=True)
            cases += [("llama-1.17b", str(large), AutoConfig.from_pretrained(large), m, 4, 128, 2, True) for m in ("lora", "freeze", "full")]
        print(f"{precision} on {device.type}; tensors: peak tensor memory, RSS: peak resident memory of the process")
        print(f"{'model':<13} {'method':<6} {'batch':>6} {'tensors MB':>10} {'est.':>7} {'error':>7}  {'RSS MB':>7} {'est.':>7} "
              f"{'error':>7}   {'weights':>7} {'grads':>6} {'optim':>6} {'activ.':>6} {'proc.':>6}   {'tok/s':>5} {'est.':>5}")
        results = []
        for number, (label, model, shape, method, micro, block, steps, large) in enumerate(cases):
            memory = fit_memory(shape, StepShape(method, block, precision))
            resident = as_resident(memory)
            limit = None
            if large:
                room = psutil.virtual_memory().available - SPARE
                if resident.estimate(micro).total > room:
                    micro = 1  # the brief's rule for the machine's safety: a smaller micro-batch, and the cap below
                limit = room
            out = root / f"run{number}"
            settings = overrides(model, shape, method, micro, block, steps, precision, out)
            tensors = None if large or args.rss_only else measure_tensors(settings + [("output.dir", str(root / f"tensors{number}"))])
            rss, stopped, speeds = measure_rss(settings, out, limit)
            e, r, mb = memory.estimate(micro), resident.estimate(micro), 2**20
            tensor_cols = (f"{tensors / mb:>10.0f} {e.total / mb:>7.0f} {e.total / tensors - 1:>+7.1%}" if tensors
                           else f"{'-':>10} {e.total / mb:>7.0f} {'-':>7}")
            rss_error = None if stopped else r.total / rss - 1
            rss_cols = f"{('>' if stopped else '') + f'{rss / mb:.0f}':>7} {r.total / mb:>7.0f} " + \
                       (f"{rss_error:>+7.1%}" if rss_error is not None else f"{'-':>7}")
            speed = "-" if label.startswith("tiny") else f"{tokens_per_second(shape, memory.params, memory.trainable, method, block, device_rate(device, precision)):.0f}"
            measured_speed = f"{sum(speeds) / len(speeds):.0f}" if speeds else "-"
            print(f"{label:<13} {method:<6} {f'{micro}x{block}':>6} {tensor_cols}  {rss_cols}   {r.weights / mb:>7.0f} {r.gradients / mb:>6.0f} "
                  f"{r.optimizer / mb:>6.0f} {r.activations / mb:>6.0f} {r.process / mb:>6.0f}   {measured_speed:>5} {speed:>5}", flush=True)
            results.append({"model": label, "method": method, "batch": f"{micro}x{block}", "tensors": tensors, "estimate": e.total,
                            "rss": rss, "rss_stopped": stopped, "resident_estimate": r.total,
                            "error": e.total / tensors - 1 if tensors else None, "rss_error": rss_error})
        for key, name in (("error", "tensors"), ("rss_error", "RSS")):
            rows = [r for r in results if r[key] is not None and not r["model"].startswith("tiny" if key == "rss_error" else "\0")]
            if rows:
                worst = max(rows, key=lambda r: abs(r[key]))
                print(f"largest {name} error: {worst[key]:+.1%} ({worst['model']}, {worst['method']}); target: within 25%")
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
