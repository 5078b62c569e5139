"""`tunesmith doctor`: the environment on one screen, so a user sees what will run where before training."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field

from .errors import UserError


@dataclass
class Check:
    name: str
    value: str
    ok: bool = True
    hint: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, value: str, ok: bool = True, hint: str = "") -> None:
        self.checks.append(Check(name, value, ok, hint))

    def as_dict(self) -> dict:
        return {"checks": [asdict(check) for check in self.checks], "ok": all(check.ok for check in self.checks)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device(report: Report) -> None:
    import torch

    from .runtime import cpu_has_bf16

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16 (fp16 with loss scaling)"
            report.add(f"GPU {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {bf16}")
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        report.add("device", "Apple MPS")
    else:
        report.add("device", f"CPU only ({'native bf16: training in bf16' if cpu_has_bf16() else 'no native bf16: training in fp32'})",
                   hint="a CUDA GPU trains tens of times faster; see the README's GPU section")


def _host(report: Report) -> None:
    import psutil

    from .models import tunesmith_home

    report.add("CPU", f"{os.cpu_count()} cores ({platform.machine()})")
    memory = psutil.virtual_memory()
    report.add("RAM", f"{memory.total / 2**30:.1f} GiB total, {memory.available / 2**30:.1f} GiB available")
    home = tunesmith_home()
    probe = home if home.exists() else next((p for p in home.parents if p.exists()), home.anchor)
    free = shutil.disk_usage(probe).free / 2**30
    report.add("cache", f"{home} ({free:.1f} GiB free)", ok=free >= 2, hint="" if free >= 2 else "free some disk: models and prepared data live here")


def _models(report: Report) -> None:
    from .models import tunesmith_home
    from .models.embedded import embedded_gguf_path, is_converted
    from .models.resolve import _hub_reachable

    hub = _hub_reachable(timeout=2.0)
    report.add("Hugging Face hub", "reachable" if hub else "not reachable",
               hint="" if hub else "hub models must already be in the cache; local directories, .gguf files and smollm2-135m work offline")
    try:
        gguf = embedded_gguf_path()
    except UserError as exc:
        report.add("embedded model", "not installed", ok=False, hint=str(exc))
        return
    converted = is_converted(gguf, tunesmith_home())
    report.add("embedded model", f"smollm2-135m installed ({gguf.name}), {'converted' if converted else 'not converted yet'}",
               hint="" if converted else "the first run converts it once (about half a minute)")


def run_checks() -> Report:
    report = Report()
    report.add("Python", platform.python_version())
    for package in ("torch", "transformers", "peft", "tokenizers"):
        version = _version(package)
        report.add(package, version or "not installed", ok=version is not None,
                   hint="" if version else f"pip install {package} (or run `make setup`)")
    if _version("torch"):
        _device(report)
    _host(report)
    _models(report)
    return report
