"""A student made from its teacher: a copy with some of its blocks kept (depth pruning, as in Sheared-LLaMA, Minitron and
torchtune's distillation recipes), written once as an ordinary Hugging Face model under the cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, UserError
from ..models import ResolvedModel, load_model, load_model_config, load_tokenizer
from ..models.weights import is_classifier, transformer_blocks
from ..rundir.fingerprint import folder_identity

TASK_FILE = "tunesmith_task.json"  # a classifier teacher's labels go with its student


def kept_blocks(total: int, keep: int | list[int]) -> list[int]:
    """The teacher's blocks the student keeps: `keep` of `total`, evenly spaced with the first and the last among them,
    or the ones named."""
    if isinstance(keep, list):
        outside = [i for i in keep if i >= total]
        if outside:
            raise ConfigError([f"distill.student.from_teacher.keep_layers: the teacher has blocks 0 to {total - 1}; "
                               f"{', '.join(map(str, outside))} is not one of them"])
        return sorted(keep)
    if keep >= total:
        raise ConfigError([f"distill.student.from_teacher.keep_layers: {keep} keeps every one of the teacher's {total} blocks; "
                           f"keep fewer (half is {max(1, total // 2)}), or train the teacher further instead"])
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def student_dir(teacher: ResolvedModel, kept: list[int], home: Path) -> Path:
    identity = json.dumps({"teacher": str(Path(teacher.path).resolve()), "files": folder_identity(Path(teacher.path)), "kept": kept})
    return home / "students" / f"{Path(teacher.path).resolve().name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


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
    config = type(config).from_dict(config.to_dict())
    config.num_hidden_layers = len(kept)  # GPT-2's n_layer through its attribute map
    for per_layer in ("layer_types", "sliding_window_pattern_list"):  # architectures that give each block its own kind
        values = getattr(config, per_layer, None)
        if isinstance(values, list) and len(values) > max(kept):
            setattr(config, per_layer, [values[i] for i in kept])
    return config


def student_config(teacher_config, keep: int | list[int]):
    """The student's model config: the teacher's, with the kept blocks only (planning reads it before the student exists)."""
    return _kept_config(teacher_config, kept_blocks(teacher_config.num_hidden_layers, keep))


def make_student(teacher: ResolvedModel, keep: int | list[int], home: Path, log: Callable[[str], None] = print) -> ResolvedModel:
    """The student for `teacher` keeping `keep` of its blocks, made on first use and reused after."""
    total = load_model_config(teacher).num_hidden_layers
    kept = kept_blocks(total, keep)
    target = student_dir(teacher, kept, home)
    if (target / "config.json").is_file():
        return ResolvedModel(str(target), str(target), True, teacher.trust_remote_code)
    log(f"student: the teacher's blocks {', '.join(map(str, kept))} of {total}, written once to {target}")
    classifier = (Path(teacher.path) / TASK_FILE).is_file() and "Classification" in " ".join(
        getattr(load_model_config(teacher), "architectures", None) or [])
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
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    student.save_pretrained(partial)
    load_tokenizer(teacher).save_pretrained(partial)
    if (Path(teacher.path) / TASK_FILE).is_file():
        shutil.copyfile(Path(teacher.path) / TASK_FILE, partial / TASK_FILE)
    (partial / "tunesmith_student.json").write_text(json.dumps({"teacher": teacher.spec, "teacher_blocks": total, "kept": kept}))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process made the same student first
        shutil.rmtree(partial, ignore_errors=True)
    return ResolvedModel(str(target), str(target), True, teacher.trust_remote_code)
