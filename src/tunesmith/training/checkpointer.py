"""The run's checkpointer: save, restore, roll back after divergence, and keep the best weights.

Restoring loads the checkpoint's loop state into the one `LoopState` the loop holds, in place.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..models.load import context_length
from .checkpoint import SavedCheckpoint, apply_checkpoint, gather_trainable, newest_intact_checkpoint, save_checkpoint, set_aside, \
    write_tensors
from .distributed import Distributed
from .state import LoopState


MAX_ROLLBACKS = 8  # the learning rate at 1/256 of its own: a run still diverging there diverges for another reason


class Checkpointer:
    def __init__(self, run_dir: Path, parts, keep_last: int, context: Distributed, log):
        self.run_dir, self.parts, self.keep_last, self.context, self.log = run_dir, parts, keep_last, context, log

    def save(self, state: LoopState) -> None:
        with state.timed():
            runner = self.parts.runner
            state.micro_batch_size = runner.micro_batch_size
            state.rollout = self.parts.rollouts.state() if self.parts.rollouts is not None else {}
            save_checkpoint(self.run_dir, state.step, self.parts.model, runner.optimizer, runner.scheduler, runner.scaler,
                            state.as_dict(), self.keep_last, self.context)

    def keep_best(self, state: LoopState) -> None:
        """The trainable weights of the best evaluation so far, as best/trainable.safetensors."""
        with state.timed():
            tensors = gather_trainable(self.parts.model) if self.parts.sharded or self.context.is_main else None
            if self.context.is_main:
                (self.run_dir / "best").mkdir(exist_ok=True)
                write_tensors(tensors, self.run_dir / "best" / "trainable.safetensors")

    def restore(self, saved: SavedCheckpoint, state: LoopState) -> None:
        runner = self.parts.runner
        values = apply_checkpoint(saved, self.parts.model, runner.optimizer, runner.scheduler, runner.scaler)
        state.load(values)
        self._take_probe_texts(values, state, saved)
        runner.micro_batch_size = state.micro_batch_size or runner.micro_batch_size
        if self.parts.rollouts is not None:
            self.parts.rollouts.load(state.rollout)

    def _take_probe_texts(self, values: dict, state: LoopState, saved: SavedCheckpoint) -> None:
        """The probe scores the texts the checkpoint kept, which its zero was measured on, whatever the probe cache, the
        general file or the sampled model hold now; a checkpoint from before they were kept takes the texts built now."""
        probe = self.parts.probe
        if probe is None or not state.probe_base:  # no zero yet: the next evaluation measures it, and keeps its texts
            state.probe_texts = {}
            return
        if "probe_texts" not in values:
            state.probe_texts = probe.texts_record()
            if self.context.is_main:
                self.log(f"probe: {saved.path} is from before checkpoints kept the probe's texts, so the texts built now are "
                         "scored; they match the run's zero only if the probe cache and monitor.general_probe's file are as they were")
            return
        if values["probe_texts"] == probe.texts_record():
            return
        config = getattr(self.parts.model, "config", None)
        try:
            probe.take_texts(values["probe_texts"], set(state.probe_base),
                             max(len(self.parts.tokenizer), getattr(config, "vocab_size", 0) or 0), context_length(config))
        except ValueError as exc:
            raise UserError(f"{saved.path / 'state.json'} is damaged (its forgetting probe texts: {exc}); move that checkpoint "
                            "aside to resume from the one before, or start a new run with another --out") from None
        if self.context.is_main:
            self.log(f"{probe.describe()}, as {saved.path} kept them", highlight=False)

    def roll_back(self, state: LoopState) -> None:
        """Back to the last intact checkpoint with the learning rate halved."""
        runner = self.parts.runner
        saved, damaged = newest_intact_checkpoint(self.run_dir, self.context.rank, self.log)
        if saved is None:
            raise UserError(f"training diverged: {state.bad_in_a_row} non-finite steps in a row before the first checkpoint; "
                            f"lower train.lr (now {runner.optimizer.param_groups[0]['lr']:.3g})")
        if state.rollbacks >= MAX_ROLLBACKS:
            raise UserError(f"training diverged again after {state.rollbacks} roll-backs, each halving the learning rate: what "
                            "breaks it is not the step size; look at the data and the loss's settings (the checkpoints are kept)")
        self.context.barrier()
        if self.context.is_main:
            set_aside(damaged)
        self.restore(saved, state)
        state.rollbacks += 1
        runner.scheduler.base_lrs = [lr / 2 for lr in runner.scheduler.base_lrs]
        for group, lr in zip(runner.optimizer.param_groups, runner.scheduler.get_last_lr()):
            group["lr"] = lr / 2
