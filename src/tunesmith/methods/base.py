"""What a training method decides, with full fine-tuning's answers as the defaults."""

from __future__ import annotations

from typing import ClassVar


class Method:
    """One way of choosing which weights train, and everything that follows from that choice.

    Training builds the model through `check_device`, `prepare` and `place`; `storage_dtypes` says how its weights
    are held; `settings` are what a resume must not change; `unquantized` is the method export rebuilds a
    full-precision model with. `recommend` reads `learning_rate`, `runs_on`, `cost_per_parameter` and the memory
    facts (`top_blocks`, `quantized_base`, `default_trained_layers`); `diagnose` reads `advice`.
    """

    name: ClassVar[str] = "full"
    learning_rate: ClassVar[float] = 5e-5  # where `recommend` starts this method
    trains_all: ClassVar[bool] = True  # every weight trains: the others are weighed against this
    adapters: ClassVar[bool] = False  # small adapters beside a frozen base: saved on their own too (final-adapter/)
    top_blocks: ClassVar[bool] = False  # only the top blocks train: the bottom is frozen
    quantized_base: ClassVar[bool] = False  # the frozen base is held in 4 bits
    fallback: ClassVar[bool] = False  # what a run that does not fit in memory may switch to
    settings: ClassVar[tuple[str, ...]] = ()  # config keys that decide the trained weights: fixed for a run's life
    reads: ClassVar[tuple[str, ...]] = ()  # config keys only this method reads (a sweep sets them only when it runs)
    # CPU: (seconds compiling adds to the first step, speed-up of the steps after it), measured on SmolLM2-135M at
    # 4x256 tokens in bf16 on 2 cores (`bench_train.py --mode compile`); a method not measured takes these, the least favourable
    cpu_compile: ClassVar[tuple[float, float]] = (77.0, 1.02)
    # by finding code, what this method adds to the finding's advice: (config key, value, why)
    advice: ClassVar[dict[str, tuple[tuple, ...]]] = {}

    @property
    def unquantized(self) -> str:
        """The method that trains the same weights on a full-precision base."""
        return self.name

    def runs_on(self, device_type: str) -> bool:
        return True

    def check_device(self, device) -> None:
        """Raise a ConfigError when the method cannot train on `device`."""

    def prepare(self, model, cfg):
        """The model to train, with requires_grad set for the method (wrapped, for adapters)."""
        return model

    def place(self, model, device):
        return model.to(device)

    def storage_dtypes(self, weights: str, precision: str):
        """The dtypes to store (frozen, trainable) parameters in; None keeps fp32.

        Under bf16 or fp16 autocast a frozen weight is only ever read in that dtype, so it is stored in it: autocast
        then neither casts it at each forward nor holds the cast copy until backward. `weights: bf16` stores the
        trained weights in bf16 too (the optimizer then rounds its fp32 updates stochastically; see `training/optim.py`).
        """
        import torch

        from ..runtime import low_precision_dtype

        low = low_precision_dtype(precision)
        frozen = low if (not self.trains_all and not self.quantized_base) or weights == "bf16" else None
        return frozen, torch.bfloat16 if weights == "bf16" else None

    def cost_per_parameter(self, device: str, trainable_share: float) -> float:
        """FLOPs per parameter per token of a training step: forward 2, backward 4."""
        return 6.0

    def default_trained_layers(self, config) -> int | None:
        """The blocks that train when `recommend` sets the method up; None: the method does not count blocks."""
        return None

    def trained_layers(self, cfg, config) -> int | None:
        """The blocks that train with the run's model settings `cfg`; None: the method does not count blocks."""
        return None

    def recommended_settings(self, config) -> dict:
        """The model settings `recommend` writes beside the method's name."""
        layers = self.default_trained_layers(config)
        return {"train_last_layers": layers} if layers else {}
