"""Where a training step's time goes: torch.profiler over tunesmith's own step on the benchmark's model and blocks.

    python benchmarks/profile_step.py --model gpt2-small --steps 3
    python benchmarks/profile_step.py --model smollm2-135m --method lora
    python benchmarks/profile_step.py --device cuda --batch-size 16 --block-size 1024 [--compile]

Prints the operators by total CPU time (self time, so nothing is counted twice) and the share of the
step that the matrix multiplications take: the part no training loop can make faster without
changing the arithmetic.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import bench_train

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "mkldnn", "aten::mkldnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt2-small", "smollm2-135m", "tiny"], default="gpt2-small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="compile the model's forward as train.compile does")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-bench-train")
    args = parser.parse_args()
    os.environ.setdefault("TUNESMITH_HOME", str(args.work / "home"))

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunesmith.models import resolve_model
    from tunesmith.methods import storage_dtypes
    from tunesmith.training.build import build_model
    from tunesmith.training.optim import build_optimizer, build_scheduler
    from tunesmith.training.fused_loss import training_loss
    from tunesmith.training.step import StepRunner

    options = argparse.Namespace(model=args.model, data=bench_train.DEFAULT_DATA, block_size=args.block_size, batch_size=args.batch_size,
                                 grad_accum=1, steps=args.steps + 1, lr=3e-4, precision="bf16", device=args.device, compile=False,
                                 mode=args.method, eval_blocks=1)
    model_dir = bench_train.build_model(args.model, args.work, options.data)
    cfg = bench_train.run_config(options, model_dir, args.work / "profile", {"model.method": args.method})
    device = torch.device(args.device)
    storage = storage_dtypes(cfg.model.method, cfg.train.weights, "bf16")
    model = build_model(resolve_model(str(model_dir), log=lambda _: None), cfg.model, device, storage=storage)
    optimizer = build_optimizer(model, cfg.train, device)
    runner = StepRunner(model, training_loss(model, cfg.train.fused_loss), optimizer, build_scheduler(optimizer, cfg.train, options.steps),
                        None, device, "bf16", args.batch_size, cfg.train.grad_clip, print)
    blocks, order, _ = bench_train.prepared_split(options, model_dir, args.work / "profile")

    class Listed:  # the benchmark's blocks, in order, as the step runner reads them
        def batch(self, indices):
            return blocks.batch([order[i % len(order)] for i in indices])

        def length(self, index):
            return blocks.length(order[index % len(order)])

    data = Listed()
    if args.compile:
        runner.compile()
    cuda = device.type == "cuda"
    for warm in range(2 if args.compile else 1):  # warm-up steps (and compilation) outside the profile
        runner.run(data, list(range(warm * args.batch_size, (warm + 1) * args.batch_size)))
    first = 2 if args.compile else 1
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(first, first + args.steps):  # the same steps timed without the profiler's overhead
        runner.run(data, list(range(step * args.batch_size, (step + 1) * args.batch_size)))
    if cuda:
        torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as trace:
        for step in range(first, first + args.steps):
            runner.run(data, list(range(step * args.batch_size, (step + 1) * args.batch_size)))
        if cuda:
            torch.cuda.synchronize()
    events = trace.key_averages()
    tokens = args.batch_size * args.block_size
    print(f"wall time per step (no profiler): {wall:.3f} s, {tokens / wall:,.0f} tokens/s")
    if cuda:
        kernel = sum(e.self_device_time_total for e in events) / 1e6 / args.steps
        print(f"GPU kernel time per step: {kernel:.3f} s ({kernel / wall:.0%} of the wall time)")
        print(events.table(sort_by="self_device_time_total", row_limit=20))
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMULS))
    print(f"{args.steps} steps of {args.batch_size}x{args.block_size} on {args.model}: {total / 1e6 / args.steps:.2f} s of operator time per step")
    print(f"matrix multiplications and attention kernels: {matmul / total:.0%} of it")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
