"""Hyperparameter sweeps on Optuna: a space of config keys, trials that are ordinary runs in `sweeps/NAME/`, pruning
at each evaluation, one or two objectives (the task's headline metric, and the forgetting drift), a study in SQLite or
any database Optuna's RDB storage takes, shared by local worker processes or other machines.

space.py reads and checks the space; study.py opens the study; trial.py runs one trial; worker.py runs the sweep;
results.py writes its table, best config and plots.
"""
