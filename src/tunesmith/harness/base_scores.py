"""The base model's benchmark scores, kept under $TUNESMITH_HOME/benchmarks: every run from one base model on the same
benchmarks scores the same step 0, so only the first run pays for it (as the forgetting probe's samples are kept).

The key holds everything the scores depend on: the model's files and tokenizer (as the probe's cache names a model),
its vocabulary as trained (a chat run adds tokens), the weights' dtype and the precision of the forward passes, the item
limit, lm-eval's version, and each benchmark's task files with the size and time of the data files they name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..models import tunesmith_home
from ..rundir.durable import write_atomically
from ..rundir.folder import read_json_object
from .selection import Selection, read_task_file


def _data_files(config) -> list[str]:
    files = ((config or {}).get("dataset_kwargs") or {}).get("data_files") if isinstance(config, dict) else None
    if isinstance(files, dict):
        files = [item for value in files.values() for item in (value if isinstance(value, list) else [value])]
    return [str(item) for item in (files if isinstance(files, list) else [files] if files else [])]


def _task_files(selection: Selection) -> list[Path]:
    files = [Path(spec) for spec in selection.specs if Path(spec).is_file()]
    return files + [path for folder in selection.folders for path in sorted(Path(folder).rglob("*.y*ml"))]


def benchmarks_key(selection: Selection) -> str:
    """What the selected benchmarks are: names, and the bytes of every task file with the size and time of its data."""
    import lm_eval
    import yaml

    digest = hashlib.sha256(f"{lm_eval.__version__}|{'|'.join(selection.specs)}".encode())
    for path in _task_files(selection):
        digest.update(path.read_bytes())
        for data in _data_files(read_task_file(path, yaml)):
            found = Path(data)
            stat = found.stat() if found.is_file() else None
            digest.update(f"|{data}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()


def base_key(model_key: str, benchmarks: str, model, precision: str, limit: int) -> str:
    weights = next(model.parameters()).dtype
    rows = model.get_input_embeddings().weight.shape[0]
    return hashlib.sha256(f"{model_key}|{benchmarks}|{weights}|{rows}|{precision}|{limit}".encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return tunesmith_home() / "benchmarks" / f"{key}.json"


def read_base(key: str) -> dict | None:
    """The kept scores (a metrics row's bench/ keys), or None; a damaged file is as good as none."""
    row = read_json_object(_path(key))
    return row if row and all(isinstance(v, (int, float)) for v in row.values()) else None


def keep_base(key: str, row: dict) -> None:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(row) + "\n")
