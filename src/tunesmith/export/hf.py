"""`tunesmith export`: a finished run as a plain Hugging Face directory (LoRA already merged) or a GGUF file, with a model card."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

import torch
import yaml

from ..config import build_config
from ..distill.student import read_record
from ..errors import ConfigError, UserError
from ..models import ResolvedModel, load_model, load_tokenizer
from ..rundir.durable import own_partial, sweep_partials
from ..rundir.folder import CONFIG_FILE, SUMMARY_FILE, config_section, read_data_report, read_json_object, read_yaml_object, \
    saved_as_started
from ..tasks import TASK_FILE, read_task, task_view

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _run_files(run_dir: Path) -> tuple[dict, dict, dict]:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; export takes a finished tunesmith run directory")
    if not (run_dir / "final" / "config.json").is_file():
        raise UserError(f"{run_dir}: no final/ model; export takes a finished tunesmith run directory")
    summary = read_json_object(run_dir / SUMMARY_FILE)
    config = read_yaml_object(run_dir / CONFIG_FILE)
    return summary, config, read_data_report(run_dir, summary)


def _metric_lines(summary: dict) -> list[str]:
    lines = []
    if "base_val_ppl" in summary:
        lines += [f"- {line}" for line in task_view(summary.get("task")).result_lines(summary)]
    for key in ("steps", "epochs", "tokens_seen", "train_seconds", "device", "precision"):
        if key in summary:
            lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    return lines or ["- no readable summary.json in the run"]


def _config_lines(config: dict) -> list[str]:
    """The run's settings as saved, with a warning where they no longer make a config (edited or damaged since)."""
    if not config:
        return ["- the run's config.yaml is missing or could not be read"]
    lines = ["```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]
    try:
        build_config(config)
    except ConfigError as exc:
        lines.append(f"- warning: this tunesmith does not take the run's config.yaml as it is ({'; '.join(exc.problems)}): it was "
                     "edited since the run, or written by another version")
    return lines


def model_card(summary: dict, config: dict, data: dict, task: dict, gguf_file: str | None = None, cut_from: dict | None = None) -> str:
    """`cut_from`: the record of the teacher a distilled student was cut from (its `tunesmith_student.json`), the
    student's base; model.name then names nothing it came from."""
    base = cut_from["teacher"] if cut_from else config_section(config, "model").get("name", summary.get("model", "unknown"))
    method = config_section(config, "model").get("method", summary.get("method", "full"))
    splits = data.get("splits", {})
    data_lines = [f"- {data.get('documents_read', 0):,} documents read, {data.get('documents_kept', 0):,} kept after cleaning "
                  f"and de-duplication; {splits.get('train', {}).get('tokens', 0):,} training and "
                  f"{splits.get('val', {}).get('tokens', 0):,} validation tokens"] if data else ["- no data report in the run"]
    data_lines += [f"- warning: {w}" for w in data.get("warnings", [])]
    config_lines = _config_lines(config)
    header = yaml.safe_dump({"base_model": str(base), "library_name": "transformers", "tags": ["tunesmith", "fine-tuned"]},
                            sort_keys=False, width=float("inf")).rstrip()  # a hand-edited name cannot add keys of its own
    return "\n".join([
        "---", header, "---", "",
        f"# Fine-tuned {' '.join(str(base).split())}", "",
        f"{task_view(task.get('task')).describe(task)} fine-tuned from `{base}` with tunesmith (method: {method}).",
        *([f"It is a student cut from that teacher: {len(cut_from['kept'])} of its {cut_from['teacher_blocks']} blocks "
           f"(blocks {', '.join(map(str, cut_from['kept']))}), then distilled."] if cut_from else []), "",
        "## Data", "", *data_lines, "",
        "## Results", "", *_metric_lines(summary), "",
        "## Training config", "", *config_lines, "",
        "## Intended use and limits", "",
        "Use it for text like the training data, in the same domain and style. It inherits the base model's "
        "knowledge, biases and errors, and a small fine-tuning set can make it repeat that set's phrasing. "
        "Its validation figures hold for data like the validation split, not beyond it; check its outputs "
        "before relying on them, and do not use it for decisions about people without human review.", "",
        _loading(gguf_file), "",
    ])


def _loading(gguf_file: str | None) -> str:
    if gguf_file:
        return (f"`{gguf_file}` runs in llama.cpp-family runtimes (`llama-cli -m {gguf_file}`) and loads in transformers with "
                f"`AutoModelForCausalLM.from_pretrained(folder, gguf_file=\"{gguf_file}\")`.")
    return ("Load it with plain transformers: `AutoModelForCausalLM.from_pretrained(path)` "
            "(`AutoModelForSequenceClassification` for a classifier with a head).")


def export_line(written: Path, dtype: str, gguf: bool, out: Path) -> str:
    loads = "llama.cpp-family runtimes and transformers (gguf_file=...)" if gguf else "transformers' from_pretrained"
    return f"wrote {written} ({dtype}): loads in {loads}; model card in {out / 'README.md'}"


def export_run(run_dir: Path, out: Path, dtype: str = "bf16", gguf: bool = False) -> Path:
    """Write `out`: the run's final weights in `dtype` (a Hugging Face directory, or one GGUF file), its tokenizer, task file and README.md.

    Returns the folder, or with `gguf` the .gguf file in it.
    """
    from .gguf import GGUF_TYPES, file_suffix

    if dtype not in (GGUF_TYPES if gguf else DTYPES):
        extra = "; the quantized types need --gguf" if dtype in GGUF_TYPES else ""
        raise UserError(f"--dtype {dtype}: use one of {', '.join(GGUF_TYPES if gguf else DTYPES)}{extra}")
    if out.is_symlink() and not out.is_dir():
        raise UserError(f"--out {out} is a link to no folder; name a new folder for the export")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a new folder for the export")
    out = out.resolve() if out.is_symlink() else out  # a link to an empty folder: the export goes there, as before
    sweep_partials(out)  # what a killed export into it left
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; pick a new folder")
    summary, config, data = _run_files(run_dir)
    final = run_dir / "final"
    if "auto_map" in read_json_object(final / "config.json"):
        raise UserError(f"{final}: the model needs its own code (its config.json names auto_map), which export never runs; "
                        "export a model transformers knows")
    task = read_task(final)
    head = task_view(task.get("task")).saved_with_head(task)
    if gguf and head:
        raise UserError("GGUF export: a classifier with a head has no GGUF form; export it without --gguf")
    gguf_name = f"model-{file_suffix(dtype)}.gguf" if gguf else None
    cut_from = read_record(final)
    card = _card(run_dir, summary, config, data, task, gguf_name, cut_from)
    found = out.is_dir()  # an empty folder (a mount point, the working folder): built inside it, the folder itself kept
    target = Path(os.path.abspath(out))  # `.` has a name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = own_partial(target / "export" if found else target)  # this export's alone until it is whole
    partial.mkdir()
    try:
        if gguf:
            from .gguf import export_gguf

            base = cut_from["teacher"] if cut_from else _base_model(run_dir, config)
            export_gguf(final, partial / gguf_name, dtype, base, f"{run_dir.name} ({base})")
        else:
            _save_hf(final, partial, dtype, head)
        (partial / "README.md").write_text(card)
        _put_in_place(partial, target, found)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out / gguf_name if gguf else out


def _put_in_place(partial: Path, out: Path, inside: bool) -> None:
    """Rename the finished export onto `--out`, or, built `inside` the empty folder it was given, its files into it
    (holding the folder's lock, so that two exports never mix); refused where another export or a user's file got there
    first, which stays as it is."""
    taken = UserError(f"--out {out}: something was written there while this export ran (another export?), and it is "
                      "kept; export again into a new folder")
    if not inside:
        try:
            os.rename(partial, out)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise taken from None
            raise
        return
    handle = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if any(entry != partial and ".partial-" not in entry.name for entry in out.iterdir()):
            raise taken
        for entry in partial.iterdir():
            os.rename(entry, out / entry.name)
        partial.rmdir()
    finally:
        os.close(handle)  # the lock goes with it


def _base_model(run_dir: Path, config: dict) -> str:
    """The run's model.name as the run read it: a relative path against the folder the run was started from."""
    name = config_section(config, "model").get("name", "")
    if not isinstance(name, str):
        return ""
    return saved_as_started(run_dir, {"model": {"name": name}})["model"]["name"]


def _card(run_dir: Path, summary: dict, config: dict, data: dict, task: dict, gguf_name: str | None, cut_from: dict | None) -> str:
    """The model card, made before anything is written, so that a run's damaged files stop the export while --out is empty."""
    try:
        return model_card(summary, config, data, task, gguf_file=gguf_name, cut_from=cut_from)
    except (TypeError, ValueError, AttributeError, RecursionError):
        raise UserError(f"{run_dir}: its summary.json, config.yaml or data_report.json holds a value of the wrong kind for the "
                        "model card; restore the damaged file from a copy") from None


def _save_hf(final: Path, out: Path, dtype: str, head: bool) -> None:
    resolved = ResolvedModel(str(final), str(final), local_files_only=True)
    load_model(resolved, dtype=DTYPES[dtype], classifier=head).save_pretrained(out)
    load_tokenizer(resolved).save_pretrained(out)
    if (final / TASK_FILE).is_file():
        shutil.copy(final / TASK_FILE, out / TASK_FILE)
