"""tunesmith's training loop against transformers.Trainer, and tunesmith's own variants against each other: the
same model, the same data in the same order where the loops allow it, the same micro-batch, steps, schedule and
precision, each run in its own process on this machine.

    python benchmarks/bench_train.py --model gpt2-small --steps 20                  # GPT-2-small shape, random init
    python benchmarks/bench_train.py --model smollm2-135m --mode full --steps 12    # (a) full fine-tuning vs the Trainer
    python benchmarks/bench_train.py --model smollm2-135m --mode lora --steps 12    # (b) LoRA r=8 vs Trainer + peft, and vs full
    python benchmarks/bench_train.py --model smollm2-135m --mode chat --steps 20 \
        --data ../shared/data/chat-dailydialog                                      # (c) packed chat vs padded, vs the Trainer
    python benchmarks/bench_train.py --model smollm2-135m --mode weights --steps 40 \
        --data ../shared/data/text-tinyshakespeare/input.txt                        # (d) bf16 weights vs fp32 masters
    python benchmarks/bench_train.py --model smollm2-135m --mode compile --steps 30 # torch.compile on the CPU: cost and gain, full and LoRA

The Trainer is set up fairly: bf16 where tunesmith uses it, SDPA attention, fused AdamW, logging every 50
steps, no evaluation or saving inside the timed steps; for chat, `DataCollatorForSeq2Seq` padding and its own
shuffled order. Dropout is off in the random-init model so that both see the same arithmetic. Tokens/s counts
real (non-padding) tokens over the optimizer steps' wall time; peak RSS is each process's own.
"""

from __future__ import annotations

import argparse
import json
import math
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


def contenders(args) -> list[tuple[str, str, dict]]:
    """(label, framework, settings) of each run the mode compares; the first is the one measured against the others."""
    lora = {"model.method": "lora", "model.lora_rank": 8, "model.lora_alpha": 16.0, "model.lora_dropout": 0.0}
    if args.mode == "lora":
        return [("tunesmith lora", "tunesmith", lora), ("trainer+peft lora", "trainer", lora), ("tunesmith full", "tunesmith", {})]
    if args.mode == "chat":
        padded = {"data.packing": "padded", "train.micro_batch_size": args.padded_batch}
        return [("tunesmith packed", "tunesmith", {}), ("tunesmith padded", "tunesmith", padded),
                ("trainer padded", "trainer", {"train.micro_batch_size": args.padded_batch})]
    if args.mode == "weights":
        return [("tunesmith bf16 weights", "tunesmith", {"train.weights": "bf16"}), ("tunesmith fp32 masters", "tunesmith", {})]
    if args.mode == "compile":
        return [("tunesmith compiled", "tunesmith", {"train.compile": True}), ("tunesmith eager", "tunesmith", {"train.compile": False}),
                ("tunesmith lora compiled", "tunesmith", {**lora, "train.compile": True}),
                ("tunesmith lora eager", "tunesmith", {**lora, "train.compile": False})]
    return [("tunesmith", "tunesmith", {}), ("trainer", "trainer", {})]


def run_config(args, model: Path, out: Path, settings: dict | None = None):
    from tunesmith import load_config

    base = {
        "model.name": str(model), "data.train": [str(args.data)], "data.block_size": args.block_size, "output.dir": str(out),
        "train.micro_batch_size": args.batch_size, "train.grad_accum": args.grad_accum, "train.max_steps": args.steps,
        "train.epochs": 10**4, "train.lr": args.lr, "train.warmup_steps": 0, "train.precision": args.precision, "train.eval_every": 10**6,
        "train.device": args.device, "train.compile": args.compile,
        "train.eval_max_blocks": 1, "train.patience": None, "train.log_every": 50, "monitor.sample_count": 0,
        "monitor.tensorboard": False, "clean.dedup_near": False, "train.save_every": 10**6,
    }
    if args.mode == "chat":
        base.update({"task": "chat", "chat.roles": {"A": "user", "B": "assistant"}})
    if args.mode in ("chat", "weights"):  # the held-out loss after the last step, on the same validation examples
        base.update({"train.eval_every": args.steps, "train.eval_max_blocks": args.eval_blocks})
    return load_config(None, list({**base, **(settings or {})}.items()))


def _seconds_since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def worker_tunesmith(args, model: Path, out: Path, settings: dict) -> dict:
    from tunesmith import train
    from tunesmith.training import step as step_module

    first: dict = {}
    original = step_module.StepRunner.run

    def clocked(self, *rest, **kwargs):  # the time to the first step: imports, load, data open, base evaluation
        first.setdefault("seconds", _seconds_since_process_start())
        return original(self, *rest, **kwargs)

    step_module.StepRunner.run = clocked
    summary = train(run_config(args, model, out, settings))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    steps = [r for r in rows if "train_loss" in r]
    timed = steps[1:] if len(steps) > 2 else steps  # the first step warms up (and compiles, where asked)
    return {"tokens_per_s": summary["tokens_per_s"], "loss": losses[-1], "loss_last5": sum(losses[-5:]) / len(losses[-5:]),
            "seconds": summary["train_seconds"], "cuda_peak_mb": steps[-1].get("cuda_max_allocated_mb"), "startup_s": first["seconds"],
            "val_loss": rows[-1].get("val_loss") if "val_loss" in rows[-1] else None,
            "steady_tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
            "first_step_s": args.batch_size * args.grad_accum * args.block_size / steps[0]["tokens_per_s"]}


def prepared_split(args, model: Path, out: Path):
    """tunesmith's prepared training split (packed blocks, or the chat examples) and its step plan's order."""
    from tunesmith.data import prepare_data
    from tunesmith.models import resolve_model, tunesmith_home
    from tunesmith.tasks import task_kind
    from tunesmith.training.plan import StepPlan

    cfg = run_config(args, model, out)
    kind = task_kind(cfg)
    tokenizer = kind.tokenizer(resolve_model(str(model)), log=lambda _: None)
    prepared = prepare_data(cfg.data, cfg.clean, tokenizer, tunesmith_home(), task=kind.preparer(cfg))
    blocks = prepared.split("train")
    plan = StepPlan(len(blocks), args.batch_size, args.grad_accum, cfg.train.epochs, args.steps, cfg.train.seed)
    order = [i for step in range(args.steps) for micro in plan.micro_batches(step) for i in micro]
    return blocks, order, tokenizer


def trainer_data(args, model_dir: Path, out: Path) -> tuple[list[dict], object]:
    """Packed blocks in tunesmith's order (lm), or every chat example with its assistant-token labels (chat)."""
    from tunesmith.batch import IGNORE

    blocks, order, tokenizer = prepared_split(args, model_dir, out)
    if args.mode != "chat":
        rows = [blocks.batch([i]).input_ids[0] for i in order]
        return [{"input_ids": ids, "labels": ids} for ids in rows], None
    from transformers import DataCollatorForSeq2Seq

    examples = []
    for i in range(len(blocks)):
        ids, mask = blocks.ids(i), blocks.target_mask(i)
        examples.append({"input_ids": ids.tolist(), "labels": [t if m else IGNORE for t, m in zip(ids.tolist(), mask)]})
    return examples, DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)


def worker_trainer(args, model_dir: Path, out: Path, settings: dict) -> dict:
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    data, collator = trainer_data(args, model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # GPT2LMHeadModel gets none, and the Trainer would then divide by T, not the T-1 targets
    if settings.get("model.method") == "lora":
        from peft import LoraConfig, get_peft_model

        from tunesmith.methods.adapters import LORA_TARGETS

        model = get_peft_model(model, LoraConfig(r=settings["model.lora_rank"], lora_alpha=settings["model.lora_alpha"],
                                                 lora_dropout=settings["model.lora_dropout"], bias="none", task_type="CAUSAL_LM",
                                                 target_modules=LORA_TARGETS[model.config.model_type]))
    batch_size = settings.get("train.micro_batch_size", args.batch_size)
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    timing: dict = {"tokens": 0}

    class StepClock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            timing.setdefault("start", time.perf_counter())
            timing.setdefault("startup", _seconds_since_process_start())

        def on_step_end(self, args_, state, control, **kwargs):
            timing["end"] = time.perf_counter()

    class Measured(Trainer):
        """The loss of each micro-batch recorded, and its real tokens counted; lm blocks read in tunesmith's order."""

        losses: list[float] = []

        def _get_train_sampler(self, train_dataset=None):
            if collator is not None:
                return super()._get_train_sampler(train_dataset)
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            if "start" in timing:
                mask = inputs.get("attention_mask")
                timing["tokens"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            value = loss[0] if return_outputs else loss
            self.losses.append(float(value.detach()))
            return loss

    training = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, bf16=args.precision == "bf16",
        use_cpu=not on_gpu, optim="adamw_torch_fused", tf32=on_gpu or None, torch_compile=on_gpu and args.compile != False,
        logging_steps=50, save_strategy="no", report_to="none", dataloader_num_workers=0, seed=42, disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Measured(model=model, args=training, train_dataset=data, data_collator=collator, callbacks=[StepClock()])
    trainer.train()
    seconds = timing["end"] - timing["start"]
    last = trainer.losses[-args.grad_accum:]
    last5 = trainer.losses[-5 * args.grad_accum:]
    return {"tokens_per_s": timing["tokens"] / seconds, "loss": sum(last) / len(last), "loss_last5": sum(last5) / len(last5),
            "seconds": seconds, "startup_s": timing["startup"], "val_loss": None,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None}


def measure(index: int, label: str, args, work: Path, turn: int) -> dict:
    """One run in its own process, its peak RSS sampled every 50 ms."""
    out = work / f"run{index}-{turn}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", str(index), "--out", str(out), *sys.argv[1:], "--data", str(args.data),
               "--padded-batch", str(args.padded_batch)]
    returncode, stdout, stderr, peak_mb = run_with_peak_rss(command)
    if returncode != 0:
        raise SystemExit(f"{label} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result = {**result, "peak_rss_mb": peak_mb}
    return {**result, "mfu": _mfu(args, result["tokens_per_s"])}


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


def chat_setup(args) -> None:
    """DailyDialog as "A:/B:" transcripts (B is the assistant), and the padded runs' micro-batch: as many examples
    per step as the packed run's rows hold, so that both see about the same examples and tokens per step."""
    from bench_usecases import dialog_file

    from tunesmith.data.examples import PackedExamples

    if args.data.is_dir():
        args.data = dialog_file(args.data, args.work)
    if not args.padded_batch:
        blocks, _, _ = prepared_split(args, build_model(args.model, args.work, args.data), args.work / "prepare")
        packed = PackedExamples(blocks, args.block_size)
        args.padded_batch = max(1, round(args.batch_size * len(blocks) / len(packed)))
        print(f"{len(blocks)} training conversations packed into {len(packed)} rows of up to {args.block_size} tokens "
              f"({sum(map(packed.length, range(len(packed)))) / (len(packed) * args.block_size):.1%} full); "
              f"padded runs: {args.padded_batch} conversations per micro-batch")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown CPU")


def report(args, runs: list[tuple[str, dict]]) -> None:
    print(f"{'':26s} {'tokens/s':>9s} {'steps 2+':>9s} {'peak RSS MB':>12s} {'last loss':>10s} {'last 5':>8s} {'val loss':>9s} "
          f"{'to step 1 s':>12s}")
    for label, r in runs:
        val = f"{r['val_loss']:9.4f}" if r.get("val_loss") is not None else f"{'-':>9s}"
        steady = f"{r['steady_tokens_per_s']:9.1f}" if r.get("steady_tokens_per_s") else f"{'-':>9s}"
        print(f"{label:26s} {r['tokens_per_s']:9.1f} {steady} {r['peak_rss_mb']:12.0f} {r['loss']:10.4f} {r['loss_last5']:8.4f} {val} "
              f"{r['startup_s']:12.1f}")
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)] if args.mode == "compile" else \
        [(runs[0], other) for other in runs[1:]]
    for (first_label, first), (label, r) in pairs:
        steady = f" ({first['steady_tokens_per_s'] / r['steady_tokens_per_s']:.2f}x from step 2)" \
            if first.get("steady_tokens_per_s") and r.get("steady_tokens_per_s") else ""
        line = (f"{first_label} / {label}: {first['tokens_per_s'] / r['tokens_per_s']:.2f}x tokens/s{steady}, "
                f"{first['peak_rss_mb'] / r['peak_rss_mb']:.2f}x peak RSS, last-5 loss {first['loss_last5'] / r['loss_last5'] - 1:+.2%}")
        if first.get("val_loss") is not None and r.get("val_loss") is not None:
            line += f", held-out loss {first['val_loss'] / r['val_loss'] - 1:+.2%} (perplexity {math.exp(first['val_loss']):.2f} vs {math.exp(r['val_loss']):.2f})"
        if args.mode == "compile" and "first_step_s" in r:
            line += f", first step {first['first_step_s']:.1f} s vs {r['first_step_s']:.1f} s"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt2-small", "smollm2-135m", "tiny"], default="gpt2-small")
    parser.add_argument("--mode", choices=["full", "lora", "chat", "weights", "compile"], default="full")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--compile", default="auto", type=lambda v: {"true": True, "false": False}.get(v, v),
                        help="tunesmith's train.compile (auto: on CUDA, and on a CPU for long runs); the Trainer compiles on CUDA")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a text or JSONL file; for --mode chat, the DailyDialog folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--padded-batch", type=int, default=0, help="--mode chat: conversations per padded micro-batch (0: as packed)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-blocks", type=int, default=64, help="--mode chat and weights: validation blocks or examples measured")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--turns", type=int, default=1, help="run the contenders in turn this many times; the best turn of each counts")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-bench-train")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TUNESMITH_HOME", str(args.work / "home"))
    runs = contenders(args)
    if args.worker is not None:
        label, framework, settings = runs[args.worker]
        model = build_model(args.model, args.work, args.data)
        run = worker_tunesmith if framework == "tunesmith" else worker_trainer
        print(json.dumps(run(args, model, args.out, settings)))
        return
    if args.mode == "chat":
        chat_setup(args)
        runs = contenders(args)
    build_model(args.model, args.work, args.data)
    tokens = args.steps * args.grad_accum * args.batch_size * args.block_size
    print(f"{cpu_name()}; model {args.model}, mode {args.mode}, {args.steps} steps of {args.batch_size}x{args.block_size} tokens "
          f"(accumulation {args.grad_accum}), {args.precision}, up to {tokens:,} tokens per run, {args.turns} turn(s)")
    results: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
    for turn in range(args.turns):
        for index, (label, _, _) in enumerate(runs):
            results[index].append(measure(index, label, args, args.work, turn))
            r = results[index][-1]
            gpu = f"  MFU {r['mfu']:.1%}  CUDA peak {r['cuda_peak_mb']:.0f} MB" if r.get("mfu") is not None else ""
            print(f"  turn {turn + 1} {label:26s} {r['tokens_per_s']:8.1f} tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"last loss {r['loss']:.4f}{gpu}", flush=True)
    report(args, [(label, max(results[i], key=lambda r: r["tokens_per_s"])) for i, (label, _, _) in enumerate(runs)])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", "--help"], check=True, capture_output=True)
    print(f"tunesmith --help: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
