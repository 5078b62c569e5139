"""GGUF export: each type's file size and held-out perplexity, read back by transformers, against the run itself.

Two runs are trained here on tinyshakespeare (`../shared/data/text-tinyshakespeare`), its last 5% held out:
- the embedded default (SmolLM2-135M-Instruct, a Llama) fine-tuned for `--steps` steps;
- a GPT-2-shaped model (GPT-2's layout and 1024-token context, `--gpt2-layers` x `--gpt2-width`, a byte-level
  BPE vocabulary of 8,192 trained on the training text) trained from its random start by tunesmith.

Each run is exported with `tunesmith export --gguf --dtype T` for every T; each file is loaded back with
transformers (`gguf_file=`) and its perplexity measured on the held-out text in fp32, in 256-token blocks.
Printed per type: bytes, share of the F16 file, perplexity and its change against F16 and against the run.
Targets: Q8_0 at most 55% of F16 with perplexity within 1% of F16's; Q4_0 at most 35%.

    python benchmarks/bench_gguf.py --data ../shared/data
    python benchmarks/bench_gguf.py --data ../shared/data --steps 4 --gpt2-steps 20 --held-out-tokens 2000   # a quick run
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_name

TYPES = ["fp16", "bf16", "q8_0", "q5_0", "q4_0"]


def split_text(data: Path, work: Path) -> tuple[Path, str]:
    text = (data / "text-tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = text.rfind("\n\n", 0, int(len(text) * 0.95))
    train = work / "train.txt"
    train.write_text(text[:cut], encoding="utf-8")
    return train, text[cut:].strip()


def gpt2_shaped(train: Path, directory: Path, layers: int, width: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(train)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = GPT2Config(vocab_size=len(fast), n_positions=1024, n_embd=width, n_layer=layers, n_head=width // 64,
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def train_run(model: str, train: Path, out: Path, steps: int, lr: float, method: str) -> Path:
    from tunesmith import train as train_api
    from tunesmith.config import load_config

    settings = [("model.name", model), ("model.method", method), ("data.train", str(train)), ("data.block_size", 256),
                ("output.dir", str(out)), ("train.max_steps", steps), ("train.lr", lr), ("train.micro_batch_size", 8),
                ("train.eval_every", steps), ("train.warmup_steps", max(1, steps // 10))]
    train_api(load_config(None, settings))
    return out


def perplexity(model, tokenizer, text: str, max_tokens: int) -> tuple[float, int]:
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, 256):
            block = ids[start:start + 257][None]
            if block.shape[1] < 2:
                break
            logits = model(block[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], block[0, 1:], reduction="sum")
            total, count = total + loss.item(), count + block.shape[1] - 1
    return math.exp(total / count), count


def measure(run: Path, held_out: str, max_tokens: int, work: Path, label: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.cli import main
    from tunesmith.models.embedded import gguf_config

    reference_tokenizer = AutoTokenizer.from_pretrained(run / "final")
    reference = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32).eval()
    base_ppl, tokens = perplexity(reference, reference_tokenizer, held_out, max_tokens)
    print(f"\n{label}: {sum(p.numel() for p in reference.parameters()):,} parameters; the run itself (fp32): held-out perplexity "
          f"{base_ppl:.4f} over {tokens:,} tokens", flush=True)
    del reference
    rows = {}
    for dtype in TYPES:
        out = work / f"{label}-{dtype}"
        started = time.perf_counter()
        assert main(["export", str(run), "--out", str(out), "--dtype", dtype, "--gguf"]) == 0
        seconds = time.perf_counter() - started
        path = next(out.glob("*.gguf"))
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32, config=gguf_config(path)).eval()
        tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
        same_tokens = tokenizer(held_out[:5000]).input_ids == reference_tokenizer(held_out[:5000]).input_ids
        ppl, _ = perplexity(model, reference_tokenizer, held_out, max_tokens)
        rows[dtype] = (path.stat().st_size, ppl, same_tokens, seconds)
        del model
    f16_size, f16_ppl = rows["fp16"][0], rows["fp16"][1]
    print(f"{'type':<6} {'bytes':>13} {'of F16':>7} {'perplexity':>11} {'vs F16':>8} {'vs run':>8}  tokens  export")
    for dtype, (size, ppl, same, seconds) in rows.items():
        print(f"{dtype:<6} {size:>13,} {size / f16_size:>7.1%} {ppl:>11.4f} {ppl / f16_ppl - 1:>+8.2%} {ppl / base_ppl - 1:>+8.2%}  "
              f"{'same' if same else 'DIFFER'}  {seconds:5.1f} s", flush=True)
    q8, q4 = rows["q8_0"], rows["q4_0"]
    print(f"targets: Q8_0 {q8[0] / f16_size:.1%} of F16 (<= 55%: {'met' if q8[0] / f16_size <= 0.55 else 'MISSED'}), perplexity "
          f"{q8[1] / f16_ppl - 1:+.2%} (within 1%: {'met' if abs(q8[1] / f16_ppl - 1) <= 0.01 else 'MISSED'}); Q4_0 "
          f"{q4[0] / f16_size:.1%} of F16 (<= 35%: {'met' if q4[0] / f16_size <= 0.35 else 'MISSED'}), perplexity {q4[1] / f16_ppl - 1:+.2%}")


def main() -> None:
    from tunesmith.models.embedded import EMBEDDED_NAME

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps of the embedded default")
    parser.add_argument("--gpt2-steps", type=int, default=600)
    parser.add_argument("--gpt2-layers", type=int, default=4)
    parser.add_argument("--gpt2-width", type=int, default=256)
    parser.add_argument("--held-out-tokens", type=int, default=16384)
    parser.add_argument("--work", type=Path, help="where runs and exports go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}; work in {work}")
    train, held_out = split_text(args.data, work)
    smol = train_run(EMBEDDED_NAME, train, work / "run-smollm2", args.steps, 5e-5, "full")
    measure(smol, held_out, args.held_out_tokens, work, "smollm2-135m")
    gpt2 = train_run(str(gpt2_shaped(train, work / "gpt2-shaped", args.gpt2_layers, args.gpt2_width)), train, work / "run-gpt2",
                     args.gpt2_steps, 2e-3, "full")
    measure(gpt2, held_out, args.held_out_tokens, work, "gpt2-shaped")


if __name__ == "__main__":
    main()
