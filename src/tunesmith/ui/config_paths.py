"""The local paths a config from the page names, each confined to the runs folder, and no code run from it.

The check runs on the validated config (`load_config`'s result), not on the form's text, so every shape a value
can take (one path, a list, a weighted source) meets it; folders and globs are expanded and every file they
yield is checked too, since a link inside a folder can lead out of it. The config that comes back names each
path absolutely, as it was checked, so training reads exactly what was checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..config import PROBE_WORDS, DataSource, RunConfig, benchmark_is_path, build_config
from ..errors import ConfigError, UserError
from ..rundir.folder import SQLITE
from .runs import RunsFolder

REMOTE_TRACKING = ("http", "https")  # an MLflow server elsewhere: no file of this machine is named


class ConfinedPaths:
    """One config's paths checked against one runs folder; every problem is kept, so all are reported at once."""

    def __init__(self, folder: RunsFolder):
        self.folder = folder
        self.problems: list[str] = []

    def path(self, text: str, key: str) -> str:
        try:
            return str(self.folder.inside(os.path.expanduser(text)))
        except UserError as exc:
            self.problems.append(f"{key}: {exc}")
            return text

    def files(self, patterns: list[str], key: str) -> list[str]:
        """Files, folders or globs, each inside the folder, and so is every file they expand to."""
        from ..data.read import expand_paths

        known = len(self.problems)
        resolved = [self.path(pattern, key) for pattern in patterns]
        if resolved and len(self.problems) == known:
            try:
                expand_paths(resolved, key, confine_to=self.folder.root)
            except UserError as exc:
                self.problems.append(str(exc))
        return resolved

    def source(self, item: str | DataSource) -> str | dict:
        if isinstance(item, DataSource):
            paths = self.files(item.paths, "data.train")
            return {"path": paths if isinstance(item.path, list) else paths[0], "weight": item.weight}
        return self.files([item], "data.train")[0]

    def model(self, name: str, key: str = "model.name") -> str:
        """A local model (a folder, a run, a .gguf file) inside the folder, with every file in it; a hub id or the
        embedded model's name stays a name, as `resolve_model` would read it."""
        from ..models.embedded import EMBEDDED_NAME

        local = name.endswith(".gguf") or name.startswith((".", "/", "~")) or name.count("/") > 1 or \
            os.path.lexists(self.folder.root / name) or os.path.lexists(name)  # the last as `resolve_model` would find it
        if name == EMBEDDED_NAME or not local:
            return name
        known = len(self.problems)
        resolved = self.path(name, key)
        if len(self.problems) == known and Path(resolved).is_dir():
            leaving = self.folder.first_leaving(Path(resolved))
            if leaving is not None:
                self.problems.append(f"{key}: {leaving} leads outside the runs folder (a symbolic link); "
                                     "copy the model's files themselves into the folder")
        return resolved

    def probe(self, value: str) -> str:
        return value if value in PROBE_WORDS else self.files([value], "monitor.general_probe")[0]

    def benchmarks(self, specs: list[str]) -> list[str]:
        """lm-eval task names only: a task file can name Python (`!function`) that lm-eval imports, so files and
        folders of tasks are for the command line, where the user runs their own code knowingly."""
        for spec in specs:
            if benchmark_is_path(spec, self.folder.root):
                self.problems.append(f"monitor.benchmarks: {spec}: task files and folders are not taken from the page "
                                     "(a task file can run Python code); name lm-eval tasks such as piqa, or run "
                                     "`tunesmith train --set 'monitor.benchmarks=[FILE]'` from the command line")
        return specs

    def remote_code(self, allowed: bool) -> bool:
        if allowed:
            self.problems.append("model.trust_remote_code: a model's own Python code is not taken from the page; "
                                 "run `tunesmith train` from the command line to train such a model")
        return allowed

    def rewards(self, rewards: list[dict]) -> list[dict]:
        """GRPO's rewards: runs inside the folder; the user's own Python is never taken from the page (it would run)."""
        for number, reward in enumerate(rewards):
            if reward.get("python") is not None:
                self.problems.append(f"grpo.rewards: reward {number + 1}: Python rewards are not taken from the page, since their "
                                     "code would run here; start such a run with `tunesmith train` from the command line")
            if reward.get("run") is not None:
                reward["run"] = self.path(reward["run"], f"grpo.rewards: reward {number + 1}: run")
        return rewards

    def tracking(self, uri: str | None) -> str | None:
        """MLflow's store: a server elsewhere, or a file: or sqlite: store inside the folder."""
        if uri is None:
            return None
        scheme = urlsplit(uri).scheme.lower()
        if scheme in REMOTE_TRACKING:
            return uri
        if scheme in ("", "file"):
            resolved = Path(self.path(unquote(urlsplit(uri).path) if scheme else uri, "monitor.mlflow_uri"))
            return resolved.as_uri() if resolved.is_absolute() else uri
        if uri.lower().startswith(SQLITE):
            return SQLITE + self.path(uri[len(SQLITE):], "monitor.mlflow_uri")
        self.problems.append(f"monitor.mlflow_uri: {scheme}: stores are not taken from the page; name an http(s) "
                             "tracking server, or a file: or sqlite:/// store inside the runs folder")
        return uri


def confine_paths(cfg: RunConfig, folder: RunsFolder) -> RunConfig:
    """`cfg` with every local path it names made absolute and checked to lie inside `folder`; ConfigError otherwise."""
    paths = ConfinedPaths(folder)
    raw = cfg.model_dump(mode="json")
    raw["data"]["train"] = [paths.source(item) for item in cfg.data.train]
    raw["data"]["val"] = paths.files(cfg.data.val, "data.val")
    raw["model"]["name"] = paths.model(cfg.model.name)
    raw["monitor"]["general_probe"] = paths.probe(cfg.monitor.general_probe)
    if cfg.monitor.drift_from is not None:
        raw["monitor"]["drift_from"] = paths.model(cfg.monitor.drift_from, "monitor.drift_from")
    if cfg.distill.teacher is not None:
        raw["distill"]["teacher"] = paths.model(cfg.distill.teacher, "distill.teacher")
    raw["monitor"]["mlflow_uri"] = paths.tracking(cfg.monitor.mlflow_uri)
    raw["monitor"]["benchmarks"] = paths.benchmarks(cfg.monitor.benchmarks)
    raw["model"]["trust_remote_code"] = paths.remote_code(cfg.model.trust_remote_code)
    raw["grpo"]["rewards"] = paths.rewards(raw["grpo"]["rewards"])
    if paths.problems:
        raise ConfigError(paths.problems)
    return build_config(raw)


__all__ = ["confine_paths"]
