"""A student made from its teacher: a copy with some of its blocks kept (depth pruning, as in Sheared-LLaMA, Minitron and
torchtune's distillation recipes), written once as an ordinary Hugging Face model under the cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, UserError
from ..rundir.durable import as_os_error, own_partial
from ..tasks import TASK_FILE
from ..models import ResolvedModel, load_model, load_model_config, load_tokenizer
from ..models.weights import is_classifier, scores_with_head, transformer_blocks
from ..rundir.fingerprint import folder_identity

STUDENT_FILE = "tunesmith_student.json"  # in a student's folder: its teacher and the blocks it kept


def read_record(folder: str | Path, depth: int | None = None) -> dict | None:
    """A model folder's record of the teacher it was cut from ({"teacher", "teacher_blocks", "kept"}), None without one;
    a damaged one is refused in one line, since the pairs of blocks and the report would rest on it."""
    path = Path(folder) / STUDENT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        record, problem = None, f"unreadable ({str(exc)[:80]})"
    else:
        problem = _record_problem(record)
        if not problem and depth is not None and len(record["kept"]) != depth:
            problem = f"it names {len(record['kept'])} kept blocks but the model has {depth}"
    if problem:
        raise UserError(f"{path}: {problem}; it records which teacher blocks this model was cut from: delete it (the model "
                        "then counts as one of its own), or restore it from the run that made the model")
    return record


def _record_problem(record) -> str | None:
    """What is wrong with a student record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    total, kept = record.get("teacher_blocks"), record.get("kept")
    if type(total) is not int or total < 1:
        return "teacher_blocks is not a positive whole number"
    if not isinstance(kept, list) or not kept or len(kept) >= total or any(type(i) is not int for i in kept):
        return f"kept is not a list of fewer than {total} block numbers"
    if kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= total:
        return f"kept is not distinct blocks in order between 0 and {total - 1}"
    if not isinstance(record.get("teacher"), str):
        return "teacher is not a name"
    return None


def kept_blocks(total: int, keep: int | list[int], pick: str = "spaced") -> list[int]:
    """The teacher's blocks the student keeps: the ones named, or `keep` of `total`, the first ones with pick "bottom",
    else evenly spaced with the first and the last among them (the shape of a student whose blocks "similar" measures)."""
    key = "distill.student.from_teacher.keep_layers"
    if isinstance(keep, list):
        outside = [i for i in keep if i >= total]
        if outside:
            shown = ", ".join(map(str, outside[:5])) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
            raise ConfigError([f"{key}: the teacher has blocks 0 to {total - 1}; {shown} {'is' if len(outside) == 1 else 'are'} not among them"])
        chosen = sorted(keep)
    elif keep > total:
        raise ConfigError([f"{key}: the teacher has only {total} blocks; keep fewer (half is {max(1, total // 2)})"])
    elif pick == "bottom":
        chosen = list(range(keep))
    else:
        chosen = [total - 1] if keep == 1 else sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})
    if len(chosen) == total:
        raise ConfigError([f"{key}: keeping all {total} of the teacher's blocks copies the teacher; keep fewer "
                           f"(half is {max(1, total // 2)}), or train the teacher further instead"])
    return chosen


def teacher_name(teacher: ResolvedModel) -> str:
    """A teacher as records name it: a local folder by its absolute path (the same from any working directory), a hub
    model by its id."""
    local = Path(teacher.path)
    return str(local.resolve()) if local.is_dir() else teacher.path


def student_dir(teacher: ResolvedModel, kept: list[int], home: Path) -> Path:
    """Where the student for `teacher` keeping `kept` lives: named by the teacher, keyed by its files (or, for a hub id,
    its name) and the kept blocks."""
    local = Path(teacher.path)
    identity = json.dumps({"teacher": teacher_name(teacher), "files": folder_identity(local), "kept": kept})
    name = (local.resolve().parent.name if local.name == "final" else local.name) if local.is_dir() else teacher.path.replace("/", "--")
    return home / "students" / f"{name}-{len(kept)}-blocks-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def _block_prefix(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> str:
    return next(name for name, module in model.named_modules() if module is blocks)


def _kept_state(model: torch.nn.Module, kept: list[int]) -> dict[str, torch.Tensor]:
    """The model's weights with only the kept blocks, renumbered 0, 1, ... in order."""
    prefix = _block_prefix(model, transformer_blocks(model)) + "."
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, value in model.state_dict().items():
        if not name.startswith(prefix):
            state[name] = value
            continue
        index, _, rest = name[len(prefix):].partition(".")
        if int(index) in renumber:
            state[f"{prefix}{renumber[int(index)]}.{rest}"] = value
    return state


def _kept_config(config, kept: list[int]):
    """The teacher's config for the kept blocks: their count, and every per-block list (attention kinds, which blocks
    skip RoPE or route to experts: any list with one entry per block) cut to the kept blocks' entries."""
    total = config.num_hidden_layers
    config = type(config).from_dict(config.to_dict())
    for name, values in vars(config).items():
        if isinstance(values, list) and len(values) == total:
            setattr(config, name, [values[i] for i in kept])
    config.num_hidden_layers = len(kept)  # GPT-2's n_layer through its attribute map
    return config


def student_config(teacher_config, keep: int | list[int], pick: str = "spaced"):
    """The student's model config: the teacher's, with the kept blocks only (planning reads it before the student exists)."""
    return _kept_config(teacher_config, kept_blocks(teacher_config.num_hidden_layers, keep, pick))


def make_student(teacher: ResolvedModel, keep: int | list[int], home: Path, log: Callable[[str], None] = print,
                 pick: str = "spaced") -> ResolvedModel:
    """The student for `teacher` keeping `keep` of its blocks, made on first use and reused after (by any run that keeps
    the same blocks, however it chose them)."""
    total = load_model_config(teacher).num_hidden_layers
    kept = kept_blocks(total, keep, pick)
    target = student_dir(teacher, kept, home)
    if _whole(target):
        return ResolvedModel(str(target), str(target), True, teacher.trust_remote_code)
    if target.exists():
        log(f"student: {target} is damaged (a file missing or cut short); making it again")
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    log(f"student: the teacher's blocks {', '.join(map(str, kept))} of {total}, written once to {target}")
    classifier = scores_with_head(load_model_config(teacher))
    model = load_model(teacher, classifier=classifier)
    if classifier and not is_classifier(model):
        raise UserError(f"distill.teacher {teacher.spec}: its saved task names a classifier but the weights are a language model")
    config = _kept_config(model.config, kept)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    factory = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    student = factory.from_config(config, dtype=next(model.parameters()).dtype, trust_remote_code=teacher.trust_remote_code)
    missing, unexpected = student.load_state_dict(_kept_state(model, kept), strict=False)
    tied = set(getattr(student, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise UserError(f"distill.student: cannot carry the teacher's weights over to a {len(kept)}-block copy "
                        f"({', '.join((unexpected or sorted(set(missing) - tied))[:3])}); give a student with model.name instead")
    _write(student, teacher, {"teacher": teacher_name(teacher), "teacher_blocks": total, "kept": kept}, target)
    return ResolvedModel(str(target), str(target), True, teacher.trust_remote_code)


def _whole(folder: Path) -> bool:
    """Whether a student made earlier is all there: its record, config, and weight files as long as their headers say.
    Read by hand: safetensors checks a file's length only once a tensor is loaded."""
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not weights or not (folder / "config.json").is_file() or not (folder / STUDENT_FILE).is_file():
        return False
    for path in weights:
        try:
            with path.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if length > path.stat().st_size:
                    return False
                header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
            if path.stat().st_size != 8 + length + max(ends, default=0):
                return False
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return False
    return True


def _write(student: torch.nn.Module, teacher: ResolvedModel, record: dict, target: Path) -> None:
    """The student's folder, written whole under a name of this process's and then renamed into place."""
    partial = own_partial(target)
    try:
        student.save_pretrained(partial)
        load_tokenizer(teacher).save_pretrained(partial)
        if (Path(teacher.path) / TASK_FILE).is_file():  # a classifier teacher's labels go with its student
            shutil.copyfile(Path(teacher.path) / TASK_FILE, partial / TASK_FILE)
        (partial / STUDENT_FILE).write_text(json.dumps(record))
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        error = as_os_error(exc)
        if error is None:
            raise
        raise UserError(f"distill.student: cannot write the student to {target.parent} ({error.strerror or error}); "
                        "free disk space there, or set TUNESMITH_HOME to a disk with room") from None
    try:
        partial.rename(target)
    except OSError:  # another process made the same student first
        shutil.rmtree(partial, ignore_errors=True)
