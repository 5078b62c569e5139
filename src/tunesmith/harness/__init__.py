"""Standard benchmarks through EleutherAI's lm-evaluation-harness (`lm_eval`): the model tunesmith loads, handed to it as
an object, on lm-eval's tasks or on task files of the user's own.

Vocabulary: a *benchmark* is what the user names (an lm-eval task or group name, a task YAML file, a folder of them);
a *score* is one (task, metric) figure with its standard error. lm_eval itself is imported only when a benchmark runs.
"""

from .scores import Score, compare_lines, score_table, scores_of
from .selection import Selection, select_benchmarks

__all__ = ["Score", "Selection", "compare_lines", "score_table", "scores_of", "select_benchmarks"]
