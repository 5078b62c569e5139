"""The Optuna study behind a sweep: its storage (a SQLite file in the sweep folder, or any database URL Optuna's RDB
storage takes), its objectives, sampler and pruner, and the trials it counts."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError

OBJECTIVE_NAMES = ("headline", "drift")
PRUNERS = ("halving", "hyperband", "median", "none")
DEFAULT_PRUNER = PRUNERS[0]
PRUNER_ATTR, FINGERPRINT_ATTR = "pruner", "fingerprint"  # the study's records of how it was started
RECORD_WAIT_S = 10
LEGACY_PRUNER = "hyperband"
DRIFT_KEY = "drift_nats"
# Points TPE weighs before choosing each trial (Optuna's default is 24). A trial trains for minutes, so the milliseconds
# more are free; with 24 a best at the end of a range is often missed (bench_sweep.py replay: within 2% of the grid's
# best in about half the seeds, against all of them with 256).
EI_CANDIDATES = 256
SQLITE_TIMEOUT_S = 120  # workers sharing one SQLite file wait this long for its lock


@dataclass(frozen=True)
class Objective:
    """What a trial is judged by: a metrics.jsonl key at the run's best step."""

    name: str
    key: str
    label: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    @property
    def per_token(self) -> bool:
        """Measured per token, so that models with different tokenizers score apart (a perplexity, the drift)."""
        return self.key in ("val_ppl", DRIFT_KEY)


def objectives_for(names: tuple[str, ...], headline: tuple[str, str, bool]) -> list[Objective]:
    """The objectives `--objectives` names: the task's headline metric (`TaskView.headline`), and the forgetting drift."""
    chosen = []
    for name in names:
        if name == "headline":
            key, label, higher = headline
            chosen.append(Objective("headline", key, label, higher))
        elif name == "drift":
            chosen.append(Objective("drift", DRIFT_KEY, "drift (nats per token)", False))
        else:
            raise UserError(f"--objectives: unknown objective {name!r}; use headline, or headline,drift")
    if not chosen or chosen[0].name != "headline" or len(set(names)) != len(names):
        raise UserError("--objectives: use headline, or headline,drift (the headline first, each once)")
    return chosen


@dataclass(frozen=True)
class SweepSettings:
    """Everything `tunesmith sweep` was asked, passed down whole."""

    name: str
    folder: Path
    config: Path | None
    overrides: tuple[tuple[str, Any], ...]
    space: Path
    trials: int
    minutes: float | None = None
    storage: str | None = None
    workers: int = 1
    objectives: tuple[str, ...] = ("headline",)
    pruner: str | None = None  # None: the one the study was started with, or DEFAULT_PRUNER for a new study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_storage(url: str):
    """Optuna's RDB storage at `url`, or one line saying why it cannot be reached."""
    _quiet_optuna()
    from optuna.storages import RDBStorage

    shown = shown_url(url)
    if url.split("?")[0] in ("sqlite://", "sqlite:///:memory:"):
        raise UserError(f"--storage {shown}: a study in memory is lost when the sweep ends; name a file, or leave --storage out")
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    foreign = _foreign_tables(url)
    if foreign:
        raise UserError(f"--storage {shown}: this database holds tables of something other than an Optuna study "
                        f"({', '.join(foreign[:3])}), which the sweep would add its own to; name another --storage, or move "
                        "the file aside")
    try:
        return RDBStorage(url, engine_kwargs=kwargs)
    except ImportError:  # SQLAlchemy's driver for the URL's database (for postgresql:// it is psycopg 3)
        raise UserError(f"--storage {shown}: the driver for this database is not installed (for PostgreSQL: "
                        "pip install 'psycopg[binary]')") from None
    except Exception as exc:  # sqlalchemy's errors for a bad URL, a refused connection, a wrong password, a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if url.startswith("sqlite") and ("not a database" in reason or "malformed" in reason):
            raise UserError(f"--storage {shown}: cannot open the study's database ({reason}); the file is damaged or not a "
                            "study's: move it aside to start the study anew, or name another --study") from None
        raise UserError(f"--storage {shown}: cannot open the study's database ({reason}); check the URL, that the server "
                        "runs and accepts this user, or leave --storage out for a SQLite file in the sweep folder") from None


def _foreign_tables(url: str) -> list[str]:
    """The tables of a SQLite file at `url` that are not an Optuna study's (Optuna would add its own beside them before
    it found out): another program's database, read without changing it. Empty for anything else."""
    import sqlite3
    from urllib.parse import quote

    from optuna.storages._rdb.models import BaseModel  # Optuna's own schema: its tables, whatever its version

    scheme, _, rest = url.partition(":///")
    if scheme.split("+")[0] != "sqlite" or not rest:  # sqlite+pysqlite:/// is SQLite too
        return []
    path = Path(rest.split("?")[0])
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        with closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S)) as database:
            tables = {row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return []  # damaged or not a database: RDBStorage names it
    return sorted(tables - set(BaseModel.metadata.tables) - {"alembic_version"})


def fingerprint(settings: SweepSettings, space_raw: dict) -> str:
    """What a study was started with: the config file's text, the flags and --set, the space and the objectives. A study
    continues only with these (the pruner and the budget may change)."""
    config_text = settings.config.read_text(encoding="utf-8") if settings.config else ""
    blob = json.dumps({"config": config_text, "overrides": [list(p) for p in settings.overrides], "space": space_raw,
                       "objectives": list(settings.objectives)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sampler_for(settings: SweepSettings, seed: int):
    """TPE, seeded (see `SweepPlan.seed_sampler`)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.samplers import TPESampler

    # TPE draws its first trials at random; a quarter of the budget (4 to 10) leaves the rest to the model it fits
    startup = min(10, max(4, settings.trials // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # `group`, which conditional spaces need, is marked experimental
        return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True, n_ei_candidates=EI_CANDIDATES)


def pruner_for(settings: SweepSettings, eval_every: int):
    """Successive halving (the default), Hyperband or the median rule, on the steps at which the runs evaluate; none for two
    objectives (Optuna prunes single-objective studies only). Halving is the default because a sweep's budget is tens
    of trials, too few for Hyperband's other brackets to earn their cost (docs/sweep.md, Pruning)."""
    import optuna

    name = settings.pruner or DEFAULT_PRUNER
    if name == "none" or len(settings.objectives) > 1:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, settings.trials // 4)), n_warmup_steps=eval_every)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every, reduction_factor=3)
    raise ValueError(f"unknown pruner {name!r}")


def prunes(study) -> bool:
    """Whether the study's trials report their evaluations to be judged."""
    import optuna

    return not isinstance(study.pruner, optuna.pruners.NopPruner)


def study_pruner(study) -> str | None:
    return study.user_attrs.get(PRUNER_ATTR)


def settle_pruner(study, asked: str | None) -> str:
    """The pruner a study was started with, recorded in it. Continuing with another is refused: each pruner keeps its own
    records of which trials passed which rung, and they do not mix."""
    recorded = study_pruner(study)
    if recorded is None:  # a study started before studies recorded their pruner (Hyperband was the default then)
        recorded = asked or (LEGACY_PRUNER if study.get_trials(deepcopy=False) else DEFAULT_PRUNER)
        study.set_user_attr(PRUNER_ATTR, recorded)
    if recorded not in PRUNERS:
        raise UserError(f"--study {study.study_name}: the study records an unknown pruner {recorded!r} (one of {', '.join(PRUNERS)} "
                        "is expected); start a new study with another --study name")
    if asked is not None and asked != recorded:
        raise UserError(f"--study {study.study_name}: this study prunes with {recorded}; continue it with --pruner {recorded} "
                        "(or without --pruner), or start a new study with another --study name")
    return recorded


def _create_or_load(storage, settings: SweepSettings, objectives: list[Objective], create: bool):
    """The study, and whether this call created it (the database lets one creator win when machines start at once)."""
    import optuna

    if create:
        try:
            return optuna.create_study(storage=storage, study_name=settings.name,
                                       directions=[o.direction for o in objectives]), True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    return optuna.load_study(storage=storage, study_name=settings.name), False


def _started_with(study) -> dict:
    """The study's records. A study another machine has just created gets them within moments: wait for them rather
    than write our own over theirs."""
    deadline = time.monotonic() + RECORD_WAIT_S
    attrs = study.user_attrs
    while FINGERPRINT_ATTR not in attrs and time.monotonic() < deadline and not study.get_trials(deepcopy=False):
        time.sleep(0.2)
        attrs = study.user_attrs
    return attrs


def open_study(settings: SweepSettings, objectives: list[Objective], stamp: str, eval_every: int, create: bool):
    """The sweep's study, created on first use; a study started with another config, space, objectives or pruner is refused."""
    if settings.storage is None:
        settings.folder.mkdir(parents=True, exist_ok=True)  # the SQLite file's folder
    storage = open_storage(settings.storage_url)
    asked = settings.pruner if len(objectives) == 1 else "none"  # Optuna prunes single-objective studies only
    try:
        study, created = _create_or_load(storage, settings, objectives, create)
    except (ValueError, KeyError) as exc:
        raise UserError(f"--study {settings.name}: {exc}; pick another --study name") from None
    if created:  # the pruner first: whoever sees the fingerprint sees the pruner
        study.set_user_attr(PRUNER_ATTR, asked or DEFAULT_PRUNER)
        study.set_user_attr(FINGERPRINT_ATTR, stamp)
    started_with = _started_with(study).get(FINGERPRINT_ATTR)
    if started_with is None:
        study.set_user_attr(FINGERPRINT_ATTR, stamp)
    elif started_with != stamp:
        raise UserError(f"--study {settings.name}: this study was started with another config, space or --objectives; "
                        "continue it with the same ones, or start a new study with another --study name")
    study.pruner = pruner_for(replace(settings, pruner=settle_pruner(study, asked)), eval_every)
    return study


def is_interrupted(trial) -> bool:
    """A trial stopped by Ctrl-C or a killed worker: failed without an error line. It is continued, not counted."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs
