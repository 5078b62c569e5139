"""`tunesmith generate --input`: many prompts in batches, beside one prompt at a time, in one run.

The prompts are the first utterances of DailyDialog dialogues (`../shared/data/chat-dailydialog`); each gets
`--new-tokens` greedy tokens from the embedded default. Printed for each way, with the CPU's name: seconds,
generated tokens and tokens/s, then the speed-up and whether the batched texts equal the one-at-a-time ones.

- `hf generate, one at a time`: `model.generate` per prompt, what `tunesmith generate --prompt` ran before.
- `engine, one at a time`: the decoding engine with a batch of one.
- `engine, batched`: `generate_many`, rows ordered by length, `--max-batch` sequences decoded together.

    python benchmarks/bench_generate.py --data ../shared/data
    python benchmarks/bench_generate.py --data ../shared/data --prompts 8 --new-tokens 8    # a quick run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from machine import cpu_name


def read_prompts(data: Path, count: int) -> list[str]:
    path = data / "chat-dailydialog" / "dialogues_test.txt"
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        first = line.split("__eou__")[0].strip()
        if first:
            prompts.append(first)
        if len(prompts) == count:
            break
    return prompts


def main() -> None:
    from tunesmith.inference.generation import SamplingOptions, generate_many, load_generator
    from tunesmith.models.embedded import EMBEDDED_NAME

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default=EMBEDDED_NAME)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_generator(args.model, "cpu", log=lambda *a, **k: None)
    prompts = read_prompts(args.data, args.prompts)
    ids = [tokenizer(p).input_ids for p in prompts]
    options = SamplingOptions(max_new_tokens=args.new_tokens, temperature=0)
    stop = [tokenizer.eos_token_id]
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}; {args.model}, fp32 weights")
    print(f"{len(prompts)} prompts ({min(map(len, ids))}-{max(map(len, ids))} tokens), {args.new_tokens} new tokens each, greedy")

    def hf_one_at_a_time() -> list[str]:
        texts = []
        with torch.inference_mode():
            for one in ids:
                tensor = torch.tensor([one])
                out = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
                texts.append(tokenizer.decode(out[0, len(one):], skip_special_tokens=True))
        return texts

    def engine(max_batch: int) -> list[str]:
        return [c[0].text for c in generate_many(model, tokenizer, ids, options, stop, max_batch=max_batch)]

    generate_many(model, tokenizer, ids[:2], SamplingOptions(max_new_tokens=4, temperature=0), stop)  # warm-up
    rows = []
    for name, run in [("hf generate, one at a time", hf_one_at_a_time), ("engine, one at a time", lambda: engine(1)),
                      (f"engine, batched ({args.max_batch})", lambda: engine(args.max_batch))]:
        started = time.perf_counter()
        texts = run()
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
        rows.append((name, seconds, tokens, texts))
        print(f"{name:<28} {seconds:8.1f} s {tokens:7,} tokens {tokens / seconds:8.1f} tokens/s", flush=True)
    reference = rows[0]
    for name, seconds, tokens, texts in rows[1:]:
        same = sum(a == b for a, b in zip(texts, reference[3]))
        print(f"{name}: {tokens / seconds / (reference[2] / reference[1]):.2f}x the tokens/s of hf generate one at a time; "
              f"{same}/{len(texts)} texts identical to it")


if __name__ == "__main__":
    main()
