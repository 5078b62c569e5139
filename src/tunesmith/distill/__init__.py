"""Knowledge distillation: a student learns a frozen teacher's distributions beside the data's own targets.

losses.py holds the divergences (forward KL, reverse KL, Jensen-Shannon; over the whole vocabulary or the teacher's
top k), loss.py the step's loss that mixes one with the data's cross-entropy (through both models' output layers
over chunks of positions, fused.py), hidden.py the hidden-state term (each student block against the teacher block it
stands for), teacher.py the teacher (its checks against the student and its one validation pass), student.py a
student made from the teacher by keeping some of its blocks, pick.py the blocks it keeps measured on the training
data, and cache.py the teacher's top-k log-probabilities stored once beside the token files.
"""

from .hidden import HiddenMatch
from .loss import DistillLoss
from .losses import divergence, topk_divergence
from .pick import measure_pick
from .student import kept_blocks, make_student, read_record, student_config
from .teacher import Teacher, check_teacher_kind, check_teacher_labels, checked_teacher, language_source, load_teacher, resolve_teacher, tokenizer_difference

__all__ = ["DistillLoss", "HiddenMatch", "Teacher", "check_teacher_kind", "check_teacher_labels", "checked_teacher", "divergence", "kept_blocks", "load_teacher", "make_student", "read_record", "student_config",
           "language_source", "measure_pick", "resolve_teacher", "tokenizer_difference", "topk_divergence"]
