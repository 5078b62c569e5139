"""Where metrics go besides metrics.jsonl: TensorBoard (default), MLflow and Weights & Biases when enabled."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import MonitorConfig, RunConfig
from ..errors import ConfigError

SKIPPED_KEYS = {"step", "epoch", "skipped"}


def _require(module: str, key: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError([f"monitor.{key}: the {module} package is not installed; pip install {module}, or set monitor.{key}=false"]) from None


def check_trackers(cfg: MonitorConfig) -> None:
    """Fail at once, before the model loads, when an enabled tracker's package is missing."""
    if cfg.mlflow:
        _require("mlflow", "mlflow")
    if cfg.wandb:
        _require("wandb", "wandb")


class Trackers:
    """Fans every metrics row and sample out to the enabled trackers; nothing here needs the network by default."""

    def __init__(self, cfg: MonitorConfig, run_dir: Path, run_cfg: RunConfig, resume: bool):
        self.writers = []
        self.tensorboard = self.mlflow = self.wandb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tb"))
        if cfg.mlflow:
            mlflow = _require("mlflow", "mlflow")
            mlflow.set_tracking_uri(cfg.mlflow_uri or (run_dir / "mlruns").resolve().as_uri())
            mlflow.start_run(run_name=run_dir.name)
            mlflow.log_params({f"{section}.{key}": value for section, values in run_cfg.model_dump(mode="json").items()
                               for key, value in values.items()})
            self.mlflow = mlflow
        if cfg.wandb:
            wandb = _require("wandb", "wandb")
            self.wandb = wandb.init(project=cfg.wandb_project, name=run_dir.name, dir=str(run_dir), mode=cfg.wandb_mode,
                                    config=run_cfg.model_dump(mode="json"), resume="allow" if resume else None)

    def log(self, row: dict) -> None:
        step = row["step"]
        scalars = {key: value for key, value in row.items() if key not in SKIPPED_KEYS and isinstance(value, (int, float))}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def samples(self, step: int, samples: list[dict]) -> None:
        text = "\n\n".join(f"**{s['prompt']}** {s['text']}" for s in samples)
        if self.tensorboard is not None:
            self.tensorboard.add_text("samples", text, step)
        if self.mlflow is not None:
            self.mlflow.log_text(json.dumps(samples, indent=2), f"samples/step-{step:07d}.json")
        if self.wandb is not None:
            self.wandb.log({"samples": text}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()
