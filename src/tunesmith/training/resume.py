"""What a resume must keep (the settings that decide which weights train, the loss, the best step and the drift, as the
run was started with them), what it writes down of those it may change, and the earlier end it trains on from."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import MonitorConfig, RunConfig
from ..errors import UserError
from ..methods import fixed_settings
from ..rundir.folder import CONFIG_FILE, check_saved_config, record_resumed_settings, resolve_run_paths, saved_as_started, \
    set_aside_end

# settings that decide which weights train and what they mean, or what the loss is (a checkpoint's tensors and its best
# score fit only the same ones), and the method's own (`Method.settings`)
WEIGHT_SETTINGS = ("task", "model.name", "model.method", "classify.method", "preference.method", "distill.teacher", "distill.student")
LOSS_SETTINGS = ("distill.alpha", "distill.temperature", "distill.loss", "distill.hidden", "distill.cache", "distill.topk",
                 "grpo.rewards", "grpo.target_kl", "preference.beta", "preference.orpo_lambda", "preference.desirable_weight",
                 "preference.undesirable_weight")  # the best score so far was measured on the loss they make
BEST_STEP_SETTINGS = ("monitor.max_drift", "classify.metric")  # the best step so far was chosen under them, and is never chosen again
SCHEDULE_SETTINGS = ("train.lr",)  # restored with the optimizer and the scheduler: a new value would be silently ignored
OPTIMIZER_SETTINGS = ("train.weight_decay", "train.betas")  # restored with the optimizer's state, as the rate is
PROBE_SETTINGS = ("monitor.general_probe", "monitor.probe_tokens", "monitor.drift_from")  # the checkpoint's zero point of the drift was measured on them
RECORDED = ("monitor.max_drift", *PROBE_SETTINGS)  # what each checkpoint records of the monitor's, as the run started
MOVABLE = ("model.name", "distill.teacher")  # paths a moved project names anew in config.yaml: held to it alone, not recorded


def decided_settings(method: str | None) -> dict[str, str]:
    """Each setting a run cannot change midway, and what it decides (the optimizer's settings are not here: its saved
    state is compared with them, `checkpoint.check_restored_settings`)."""
    decided = {key: "which weights train" for key in (*WEIGHT_SETTINGS, *fixed_settings(method))}
    decided |= {key: "what the loss is" for key in LOSS_SETTINGS}
    decided |= {key: "which evaluation is the best step" for key in BEST_STEP_SETTINGS}
    return decided | {key: "the text the drift is measured on" for key in PROBE_SETTINGS}


def _setting(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def check_resume_settings(settings: dict, run_dir: Path) -> None:
    """Refuse to resume with a setting a run cannot change midway (`decided_settings`, the schedule, the optimizer's),
    naming it and the run's value."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():  # resumed from a config file given with --resume: that file's settings are the run's
        return
    # an empty file is refused too: resuming would run on defaults the run never had; values compare as validated ('0.5' is 0.5)
    saved = saved_as_started(run_dir, check_saved_config(run_dir, "--resume").model_dump(mode="json"))
    decided = list(decided_settings(_setting(saved, "model.method")).items())
    decided += [(key, "the learning-rate schedule, which the checkpoint restores") for key in SCHEDULE_SETTINGS]
    decided += [(key, "how AdamW steps, which the checkpoint's optimizer state restores") for key in OPTIMIZER_SETTINGS]
    for key, what in decided:
        before, now = _setting(saved, key), _setting(settings, key)
        if before != now:
            raise UserError(f"--resume: {key} is {now!r} here but {before!r} in {saved_path}; it decides {what}, "
                            "so a run cannot change it midway: drop that setting, or start a new run with another --out")


def record_resume(cfg: RunConfig, log) -> None:
    """Write the settings this resume changed into the run's config.yaml, so that a resume after the next crash keeps
    them (a longer `--max-steps` would otherwise end the run where it was first to end), and say so."""
    changed = record_resumed_settings(cfg.run_dir, cfg)
    if changed:
        longer = {"train.max_steps", "train.epochs"} & set(changed)
        schedule = "; the learning-rate schedule now runs to the new end" if longer else ""
        log(f"resume: {', '.join(changed)} changed since the run started, written to {cfg.run_dir / CONFIG_FILE}{schedule}",
            highlight=False, markup=False)


def keep_earlier_end(run_dir: Path, step: int, total_steps: int, log) -> None:
    """A resume that trains on from a run that had ended moves that end's model, summary and report aside
    (`set_aside_end`), so that nothing takes them for the run's until it ends again, and says where they are."""
    if step >= total_steps:
        return  # nothing left to train: the end is written again as it was
    kept = set_aside_end(run_dir, step)
    if kept is not None:
        log(f"resume: the run's earlier end (its final model, summary and report) moved to {kept}; the run's own are "
            "written when it ends again", highlight=False, markup=False)


def recorded_settings(settings: dict, start: Path) -> dict:
    """What a checkpoint records of the settings a run cannot change midway (its paths made absolute against `start`,
    where the run is started), so that a resume is held to them even where the run's config.yaml was edited: `settings`,
    the monitor's (checked as such), and `decided`, the others (`decided_settings`), as LoopState keeps them."""
    absolute = resolve_run_paths(settings, start)
    decided = [key for key in decided_settings(_setting(settings, "model.method")) if key not in (*RECORDED, *MOVABLE)]
    return {"settings": {key: _setting(absolute, key) for key in RECORDED},
            "decided": {key: _setting(absolute, key) for key in decided}}


def check_checkpoint_settings(settings: dict, saved_state: dict, checkpoint: Path) -> None:
    """Refuse to resume from `checkpoint` with one of the settings it recorded changed; a record that is not one
    (hand-edited) is named as damage. A checkpoint from before they were recorded is held to config.yaml alone."""
    if "settings" not in saved_state:
        return
    recorded = _valid_record(saved_state["settings"])
    decided = saved_state.get("decided", {})  # none in a checkpoint from before they were recorded
    if recorded is None or not isinstance(decided, dict):
        raise UserError(f"--resume: {checkpoint / 'state.json'} is damaged (its record of the settings the run started with is "
                        "not one); move that checkpoint aside to resume from the one before, or start a new run with another --out")
    now = _valid_record({key: _setting(settings, key) for key in RECORDED})
    what = decided_settings(_setting(settings, "model.method"))
    pairs = [(key, recorded[key], now[key]) for key in RECORDED]
    pairs += [(key, before, _setting(settings, key)) for key, before in decided.items() if key in what and key not in (*RECORDED, *MOVABLE)]
    for key, before, value in pairs:
        if before != value:
            raise UserError(f"--resume: {key} is {_yaml(value)} here but was {_yaml(before)} when {checkpoint} was "
                            f"saved; it decides {what[key]}, so a run cannot change it midway: set it back to {_yaml(before)} "
                            "in the config this resume reads (the run's config.yaml), or start a new run with another --out")


def check_validation_text(recorded, now: str, checkpoint: Path) -> None:
    """Refuse to resume on validation text other than the one the checkpoint's evaluations were scored on: the best step
    would be chosen across scores that do not compare. A checkpoint from before it was recorded, or that recorded it in
    another form, is taken as it is."""
    if isinstance(recorded, str) and recorded.split(":")[0] == now.split(":")[0] and recorded != now:
        raise UserError(f"--resume: the validation text is not the one {checkpoint} was scored on (a setting that shapes it, "
                        "such as data.*, clean.*, chat.*, the block size or train.eval_max_blocks, or a data file, changed since "
                        "the run started, or a newer tunesmith reads the data differently), so its evaluations and best step would not compare with new ones: set them back as "
                        "the run's config.yaml has them, or start a new run with another --out")


def _valid_record(record) -> dict | None:
    """The recorded settings as the config validates them ('0.5' is 0.5), or None when they are not all there and valid."""
    if not isinstance(record, dict) or set(record) != set(RECORDED):
        return None
    try:
        monitor = MonitorConfig(**{key.removeprefix("monitor."): value for key, value in record.items()})
    except (ValueError, TypeError):
        return None
    values = {key: getattr(monitor, key.removeprefix("monitor.")) for key in RECORDED}
    return {key: os.path.expanduser(value) if isinstance(value, str) else value  # as `resolve_run_paths` reads them now
            for key, value in values.items()}


def _yaml(value) -> str:
    return "null" if value is None else str(value)
