"""tunesmith's training loop against transformers.Trainer: same model, same packed blocks in the same order,
same micro-batch, accumulation, steps, schedule and precision, measured in turns on this machine.

    python benchmarks/bench_train.py --model gpt2-small --steps 20       # (a) GPT-2-small shape, random init, block 256
    python benchmarks/bench_train.py --model smollm2-135m --steps 20     # (b) the embedded default

The Trainer is set up fairly: bf16 where tunesmith uses it, SDPA attention, fused AdamW, packed
fixed-length blocks, logging every 50 steps, no evaluation or saving inside the timed steps. Dropout is
off in the random-init model so that both runs see the same arithmetic and end at the same loss. Each
run is its own process (its peak RSS is its own); tokens/s counts the optimizer steps' wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import run_with_peak_rss

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "src" / "tunesmith" / "examples" / "lumora_support.jsonl"
SHAPES = {"gpt2-small": {"n_embd": 768, "n_layer": 12, "n_head": 12}, "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2}}


def _tokenizer(data: Path):
    """A byte-level BPE trained on the corpus in a second: a random-init model needs no particular vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = data.read_text(encoding="utf-8")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text[i : i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def build_model(kind: str, work: Path, data: Path) -> Path:
    """A Hugging Face directory for the model under test (a random-init one is created once, seed 0, dropout off)."""
    if kind == "smollm2-135m":
        from tunesmith.models import resolve_model

        return Path(resolve_model("smollm2-135m", log=lambda _: None).path)
    directory = work / kind
    if not (directory / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM, GPT2Config

        tokenizer = _tokenizer(data)
        config = GPT2Config(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPES[kind])
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def run_config(args, model: Path, out: Path):
    from tunesmith import load_config

    settings = {
        "model.name": str(model), "data.train": [str(args.data)], "data.block_size": args.block_size, "output.dir": str(out),
        "train.micro_batch_size": args.batch_size, "train.grad_accum": args.grad_accum, "train.max_steps": args.steps,
        "train.epochs": 10**4, "train.lr": args.lr, "train.warmup_steps": 0, "train.precision": args.precision, "train.eval_every": 10**6,
        "train.device": args.device, "train.compile": args.compile,
        "train.eval_max_blocks": 1, "train.patience": None, "train.log_every": 50, "monitor.sample_count": 0,
        "monitor.tensorboard": False, "clean.dedup_near": False, "train.save_every": 10**6,
    }
    return load_config(None, list(settings.items()))


def _seconds_since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def worker_tunesmith(args, model: Path, out: Path) -> dict:
    from tunesmith import train
    from tunesmith.training import step as step_module

    first: dict = {}
    original = step_module.StepRunner.run

    def clocked(self, *rest, **kwargs):  # the time to the first step: imports, load, data open, base evaluation
        first.setdefault("seconds", _seconds_since_process_start())
        return original(self, *rest, **kwargs)

    step_module.StepRunner.run = clocked
    summary = train(run_config(args, model, out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train_loss" in r][-1]
    return {"tokens_per_s": summary["tokens_per_s"], "loss": last["train_loss"], "seconds": summary["train_seconds"],
            "cuda_peak_mb": last.get("cuda_max_allocated_mb"), "startup_s": first["seconds"]}


def ordered_blocks(args, model: Path, out: Path):
    """The packed blocks tunesmith trains on, in the order its step plan reads them."""
    from tunesmith.data import prepare_data
    from tunesmith.models import load_tokenizer, resolve_model, tunesmith_home
    from tunesmith.training.plan import StepPlan

    cfg = run_config(args, model, out)
    prepared = prepare_data(cfg.data, cfg.clean, load_tokenizer(resolve_model(str(model))), tunesmith_home())
    blocks = prepared.blocks("train")
    plan = StepPlan(len(blocks), args.batch_size, args.grad_accum, cfg.train.epochs, args.steps, cfg.train.seed)
    order = [i for step in range(args.steps) for micro in plan.micro_batches(step) for i in micro]
    return [blocks.batch([i]).input_ids[0] for i in order]


def worker_trainer(args, model_dir: Path, out: Path) -> dict:
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    data = [{"input_ids": ids, "labels": ids} for ids in ordered_blocks(args, model_dir, out)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # GPT2LMHeadModel gets none, and the Trainer would then divide by T, not the T-1 targets
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    timing: dict = {}

    class StepClock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            timing.setdefault("start", time.perf_counter())
            timing.setdefault("startup", _seconds_since_process_start())

        def on_step_end(self, args_, state, control, **kwargs):
            timing["end"] = time.perf_counter()

    class InOrder(Trainer):
        """The blocks in tunesmith's order; the loss of the last optimizer step recorded."""

        losses: list[float] = []

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            value = loss[0] if return_outputs else loss
            self.losses.append(float(value.detach()))
            return loss

    training = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, bf16=args.precision == "bf16",
        use_cpu=not on_gpu, optim="adamw_torch_fused", tf32=on_gpu or None, torch_compile=on_gpu and args.compile != False, logging_steps=50, save_strategy="no", report_to="none",
        dataloader_num_workers=0, seed=42, disable_tqdm=True,
    )
    trainer = InOrder(model=model, args=training, train_dataset=data, callbacks=[StepClock()])
    trainer.train()
    seconds = timing["end"] - timing["start"]
    last = trainer.losses[-args.grad_accum:]
    return {"tokens_per_s": args.steps * args.grad_accum * args.batch_size * args.block_size / seconds,
            "loss": sum(last) / len(last), "seconds": seconds, "startup_s": timing["startup"],
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None}


def measure(framework: str, args, work: Path, turn: int) -> dict:
    """One run in its own process, its peak RSS sampled every 50 ms."""
    out = work / f"{framework}-{turn}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", framework, "--out", str(out), *sys.argv[1:]]
    returncode, stdout, stderr, peak_mb = run_with_peak_rss(command)
    if returncode != 0:
        raise SystemExit(f"{framework} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result = {**result, "peak_rss_mb": peak_mb}
    flops = _mfu(args, result["tokens_per_s"])
    return {**result, "mfu": flops}


def _mfu(args, tokens_per_s: float) -> float | None:
    """Model FLOPs utilization on a GPU whose peak is known (6N + 12·L·H·Q·T FLOPs per token)."""
    from transformers import AutoConfig

    from tunesmith.models import count_parameters
    from tunesmith.runtime import flops_per_token, peak_flops, pick_device

    device = pick_device(args.device)
    peak = peak_flops(device)
    if peak is None:
        return None
    config = AutoConfig.from_pretrained(build_model(args.model, args.work, args.data))
    return tokens_per_s * flops_per_token(config, count_parameters(config), args.block_size) / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt2-small", "smollm2-135m", "tiny"], default="gpt2-small")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--compile", default="auto", type=lambda v: {"true": True, "false": False}.get(v, v),
                        help="tunesmith's train.compile (auto: on CUDA); the Trainer gets the same")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--turns", type=int, default=1, help="alternate the two this many times; the best turn of each counts")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-bench-train")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TUNESMITH_HOME", str(args.work / "home"))
    model = build_model(args.model, args.work, args.data)
    if args.worker:
        run = worker_tunesmith if args.worker == "tunesmith" else worker_trainer
        result = run(args, model, args.out)
        print(json.dumps(result))
        return

    tokens = args.steps * args.grad_accum * args.batch_size * args.block_size
    print(f"model {args.model}, {args.steps} steps of {args.batch_size}x{args.block_size} tokens (accumulation {args.grad_accum}), "
          f"{args.precision}, {tokens:,} tokens per run, {args.turns} turn(s)")
    results: dict[str, list[dict]] = {"tunesmith": [], "trainer": []}
    for turn in range(args.turns):
        for framework in results:
            results[framework].append(measure(framework, args, args.work, turn))
            r = results[framework][-1]
            gpu = f"  MFU {r['mfu']:.1%}  CUDA peak {r['cuda_peak_mb']:.0f} MB" if r.get("mfu") is not None else ""
            print(f"  turn {turn + 1} {framework:9s} {r['tokens_per_s']:8.1f} tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"last loss {r['loss']:.4f}{gpu}", flush=True)
    best = {name: max(runs, key=lambda r: r["tokens_per_s"]) for name, runs in results.items()}
    ours, ref = best["tunesmith"], best["trainer"]
    print(f"{'':10s} {'tokens/s':>10s} {'peak RSS MB':>12s} {'last loss':>10s} {'to step 1 s':>12s}")
    for name, r in best.items():
        print(f"{name:10s} {r['tokens_per_s']:10.1f} {r['peak_rss_mb']:12.0f} {r['loss']:10.4f} {r['startup_s']:12.1f}")
    print(f"ratio      {ours['tokens_per_s'] / ref['tokens_per_s']:9.2f}x {ours['peak_rss_mb'] / ref['peak_rss_mb']:11.2f}x "
          f"{ours['loss'] / ref['loss'] - 1:+9.2%}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", "--help"], check=True, capture_output=True)
    print(f"tunesmith --help: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
