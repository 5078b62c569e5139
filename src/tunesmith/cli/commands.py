"""What each `tunesmith` command does: build the config, call the library, print the outcome.

The commands that put models to use (generate, chat, predict, export, serve, ui) are in `use.py`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from ..config.reference import starter_yaml
from ..errors import UserError
from ..rundir.durable import write_atomically
from ..rundir.folder import CONFIG_FILE, is_run_dir
from .parser import config_of, overrides_of, saved_run_config
from .use import USE_HANDLERS


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False)


def _run_init(args) -> int:
    from ..tasks import task_summaries

    if args.path == "-":  # as other tools read it: the standard output
        sys.stdout.write(starter_yaml(task_summaries()))
        return 0
    path = Path(args.path)
    _check_config_target(path, args.force, "")
    write_atomically(path, starter_yaml(task_summaries()))
    print(f"wrote {path}; edit it, then run: tunesmith train {path}")
    return 0


def _run_prepare(args) -> int:
    from ..api import prepare, preview

    cfg = config_of(args)
    prepared = prepare(cfg)
    for line in prepared.summary_lines():
        print(line)
    print(f"token files and data_report.json (with doc_lengths.png): {prepared.directory}")
    if args.show:
        print("\ntrained spans are marked ⟦like this⟧:")
        for number, text in enumerate(preview(cfg, prepared, args.show), 1):
            print(f"--- example {number}\n{text}")
    return 0


def _run_train(args) -> int:
    from ..api import train

    summary = train(config_of(args), resume=args.resume, console=_console(), force=args.force)
    from ..tasks import task_view

    if os.environ.get("RANK", "0") != "0":  # under torchrun the first process speaks for the run
        return 0
    for line in task_view(summary.get("task")).result_lines(summary):
        print(line)
    print(f"run: {summary['run_dir']} (report.html, summary.json); model: {summary['final_dir']}")
    return 0


def _run_benchmarks(args) -> int:
    from ..harness.command import BenchmarkRequest, benchmark_models, result_lines

    cfg, chosen = config_of(args), dict(overrides_of(args))  # the config checks every --set; only what was set is used
    batch = cfg.train.micro_batch_size if "train.micro_batch_size" in chosen else cfg.train.eval_batch_size or 16
    request = BenchmarkRequest(args.benchmarks, args.limit, args.num_fewshot, args.chat_template, args.output,
                               cfg.train.precision if "train.precision" in chosen else None, cfg.train.device, batch,
                               cfg.model.trust_remote_code)
    log = (lambda _msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    done = benchmark_models([spec for spec in [args.model_or_run, args.compare] if spec], request, log)
    if args.json:
        print(_json({"models": [{"model": d, "scores": [s.as_dict() for s in run.scores]} for d, run in done]}))
        return 0
    print("\n".join(result_lines(done)).rstrip())
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _check_eval_flags(args) -> None:
    """eval scores either benchmarks or data: a flag of the other kind would be ignored, so it is refused instead."""
    benchmark_only = {"--limit": args.limit is not None, "--num-fewshot": args.num_fewshot is not None,
                      "--output": args.output is not None, "--chat-template": args.chat_template}
    if args.generate is not None and args.generate < 1:
        raise UserError("--generate takes a number of prompts of at least 1; leave it out to score the data alone")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens takes a number of tokens of at least 1")
    data_only = {"--data": any(key == "data.train" for key, _ in overrides_of(args)), "--generate": args.generate is not None}
    if args.benchmarks is None and any(benchmark_only.values()):
        flag = next(flag for flag, given in benchmark_only.items() if given)
        raise UserError(f"{flag} applies to benchmarks: add --benchmarks NAMES, or leave {flag} out")
    if args.benchmarks is not None and any(data_only.values()):
        flag = next(flag for flag, given in data_only.items() if given)
        raise UserError(f"{flag} scores your own data, not benchmarks: run eval with {flag} and --benchmarks separately")


def _saved_task(spec: str) -> str | None:
    """The task a local model that tunesmith trained was trained for, read before anything loads; None for any other."""
    from ..tasks import TASK_FILE, read_task

    folder = Path(spec) / "final" if is_run_dir(Path(spec)) else Path(spec)
    return read_task(folder)["task"] if (folder / TASK_FILE).is_file() else None


def _check_compared_tasks(first: str, second: str, tasks: list[str | None]) -> None:
    """Two tasks' figures do not compare; a language model is measured the way the other model's task measures it,
    when that task's output is text too (a chat run against the lm run it started from)."""
    from ..tasks import task_view

    if None in tasks or tasks[0] == tasks[1]:
        return
    if "lm" in tasks and all(task_view(task).writes_text for task in tasks):
        return
    raise UserError(f"--compare: {first} does task {tasks[0]} and {second} task {tasks[1]}; their figures do not compare: "
                    "compare two models of the same task")


def _run_eval(args) -> int:
    from ..evaluation.scoring import evaluate_model, record_generation
    from ..tasks import task_view

    _check_eval_flags(args)
    if args.benchmarks is not None:
        return _run_benchmarks(args)
    if args.compare:  # before anything loads, where both are local folders
        _check_compared_tasks(args.model_or_run, args.compare, [_saved_task(args.model_or_run), _saved_task(args.compare)])
    run_config = Path(args.model_or_run) / CONFIG_FILE
    own_split = not any(key == "data.train" for key, _ in overrides_of(args)) and run_config.is_file()
    cfg = saved_run_config(run_config, overrides_of(args)) if own_split else config_of(args)
    if not cfg.data.train:
        raise UserError("eval needs --data FILE (or a run directory, whose own validation split it then uses)")
    log = (lambda _msg: None) if args.json else print
    results = [evaluate_model(spec, None if own_split else cfg.data.train_paths, cfg, log, args.generate or 0, args.max_new_tokens,
                              speed=bool(args.compare)) for spec in [args.model_or_run, args.compare] if spec]
    if len(results) == 2:
        _check_compared_tasks(args.model_or_run, args.compare, [result.task for result in results])
    if args.generate and is_run_dir(Path(args.model_or_run)):
        record_generation(Path(args.model_or_run), results[0], "the run's validation split" if own_split else cfg.data.train_paths)
    if args.json:
        payload = results[0].as_dict() if len(results) == 1 else {"results": [r.as_dict() for r in results]}
        print(_json(payload))
        return 0
    for result in results:
        for line in task_view(result.task).eval_lines(result):
            print(line)
        if result.generation:
            print(result.generation_line())
    if len(results) == 2:
        print(task_view(results[1].task).eval_change(results[0], results[1]))
        for result in results:
            if result.speed:
                print(result.speed_line())
        if all(r.speed for r in results) and results[0].speed["use"] == results[1].speed["use"] and results[1].speed["per_s"] > 0:
            print(f"{results[0].model} runs at {results[0].speed['per_s'] / results[1].speed['per_s']:.2f}x the speed of {results[1].model}")
    return 0


def _json(payload) -> str:
    """`--json` output as strict JSON: a figure a task does not have (NaN, such as a GRPO run's perplexity) is null."""
    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value
    return json.dumps(plain(payload), allow_nan=False)


def _run_doctor(args) -> int:
    from ..doctor import run_checks

    report = run_checks()
    if args.json:
        print(_json(report.as_dict()))
        return 0
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        mark = "ok " if check.ok else "!! "
        print(f"{mark}{check.name:<{width}}  {check.value}")
        if check.hint:
            print(f"   {'':<{width}}  {check.hint}")
    return 0


def _run_recommend(args) -> int:
    import yaml

    from ..planning.candidates import candidate, default_candidates
    from ..planning.recommend import make_plan, parse_size, plan_dict, recommended_config, summary_lines, table_lines

    write = Path(args.write)
    _check_config_target(write, args.force, " or --write another path")
    if args.only and not args.candidate:
        raise UserError("--only needs at least one --candidate MODEL")
    if not (args.hours > 0 and math.isfinite(args.hours)):
        raise UserError(f"--hours {args.hours:g}: the time budget must be a positive number of hours, e.g. --hours 2")
    cfg = config_of(args)
    candidates = ([] if args.only else default_candidates()) + [candidate(spec) for spec in args.candidate]
    log = (lambda _msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    plan = make_plan(cfg, candidates, parse_size(args.memory) if args.memory else None, args.hours, log)
    raw = recommended_config(plan, cfg)
    write_atomically(write, yaml.safe_dump(raw, sort_keys=False))  # a link there is replaced, never written through
    if args.json:
        print(_json({**plan_dict(plan), "config": str(write)}))
        return 0
    print("\n".join(summary_lines(plan) + [""] + table_lines(plan) + [""]))
    chosen = plan.chosen
    print(f"recommended: {chosen.candidate.name}, method {chosen.method}, micro-batch {plan.micro_batch} x {plan.grad_accum} "
          f"accumulated, {plan.epochs:g} epochs")
    for reason in plan.reasons:
        print(f"  - {reason}")
    print(f"wrote {write}; run: tunesmith train {write}")
    return 0


def _run_diagnose(args) -> int:
    from ..diagnose.rules import diagnose_run

    findings = diagnose_run(Path(args.run))
    if args.json:
        print(_json({"run": args.run, "findings": [f.as_dict() for f in findings]}))
        return 0
    if not findings:
        print(f"{args.run}: no findings")
    for finding in findings:
        print(f"[{finding.severity}] {finding.kind}: {finding.message}")
        for advice in finding.advice:
            setting = f"set {advice.key}={advice.value}: " if advice.key and advice.value is not None else ""
            print(f"    - {setting}{advice.why}")
    return 0


def _run_report(args) -> int:
    from ..report.writer import write_report

    markdown, page = write_report(Path(args.run))
    print(f"wrote {markdown} and {page}")
    return 0


def _sweep_settings(args):
    import re

    from ..sweep.study import SweepSettings

    path = getattr(args, "config", None)
    name = args.study if args.study is not None else (Path(path).stem if path else "sweep")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        if args.study is None:
            raise UserError(f"the config file's name {name!r} cannot name the study (a folder); pass --study NAME "
                            "(letters, digits, '.', '_' and '-')")
        raise UserError(f"--study {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    for flag, value, low in (("--trials", args.trials, 1), ("--workers", args.workers, 1)):
        if value < low:
            raise UserError(f"{flag} must be at least {low} (got {value})")
    if args.minutes is not None and not args.minutes > 0:
        raise UserError(f"--minutes must be positive (got {args.minutes})")
    return SweepSettings(name=name, folder=Path(os.path.abspath(Path(args.sweeps) / name)), config=Path(path) if path else None,
                         overrides=tuple(overrides_of(args)), space=Path(args.space), trials=args.trials, minutes=args.minutes,
                         storage=args.storage, workers=args.workers,
                         objectives=tuple(part.strip() for part in args.objectives.split(",")), pruner=args.pruner)


def _run_sweep(args) -> int:
    from ..sweep.run import run_sweep
    from ..sweep.trial import describe_point

    settings = _sweep_settings(args)
    try:
        results = run_sweep(settings)
    except KeyboardInterrupt:
        print(f"interrupted: a trial that reached a checkpoint keeps it; run the same command again to continue the study "
              f"({settings.folder})", file=sys.stderr)
        return 130
    counts = results["counts"]
    print(f"\nsweep {settings.name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed; "
          f"{results['steps']:,} training steps in all")
    best = results["best"]
    if best is None:
        failed = [t for t in results["trials"] if t["state"] == "failed"]
        if failed:
            raise UserError(f"no trial completed; trial {failed[0]['number']} failed with: {failed[0]['error']} "
                            f"(each trial's log is in {settings.folder / 'logs'})")
        print("no trial completed (every one was pruned or stopped): see the table in " + str(settings.folder / "trials.md"))
        return 0
    values = ", ".join(f"{o['label']} {best[o['name']]:.4g}" for o in results["objectives"])
    kind = "the knee of the Pareto front" if results["pareto_front"] else "best"
    print(f"{kind}: trial {best['number']} ({values}) with {describe_point(best['params'])}")
    print(f"table: {settings.folder / 'trials.md'}; plots: {settings.folder / 'report.html'}; "
          f"train the best config with: tunesmith train {settings.folder / 'best.yaml'} --out runs/NAME")
    return 0


def _run_quickstart(args) -> int:
    from ..quickstart import QUICKSTART_SETTINGS, run_quickstart

    run_quickstart(config_of(args, base=QUICKSTART_SETTINGS), console=_console())
    return 0


HANDLERS = {
    "init": _run_init,
    "prepare": _run_prepare,
    "train": _run_train,
    "eval": _run_eval,
    **USE_HANDLERS,
    "doctor": _run_doctor,
    "recommend": _run_recommend,
    "diagnose": _run_diagnose,
    "report": _run_report,
    "quickstart": _run_quickstart,
    "sweep": _run_sweep,
}


def _check_config_target(path: Path, force: bool, alternative: str) -> None:
    """A name that is taken (a file, a folder, a link, even one that leads nowhere) is written over only with --force,
    and a folder never."""
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it{alternative}")
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a folder; name a file{alternative}")
