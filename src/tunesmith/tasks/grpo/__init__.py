"""GRPO: a model learns from rewards on its own completions (Group Relative Policy Optimization).

`prompts` reads and stores the prompts, `rewards` builds the reward functions, `rollout` samples, scores and lays
out the completions, `objective` is the loss; `task` ties them into the task's kind, its run-time task and its view.
"""

from .task import GrpoKind, GrpoTask, GrpoView

__all__ = ["GrpoKind", "GrpoTask", "GrpoView"]
