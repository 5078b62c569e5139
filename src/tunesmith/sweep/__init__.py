"""Hyperparameter sweeps on Optuna: a space of config keys, trials that are ordinary runs in `sweeps/NAME/`, pruning
at each evaluation, one or two objectives (the task's headline metric, and the forgetting drift), a study in SQLite or
any database Optuna's RDB storage takes, shared by local worker processes or other machines.

space.py reads and checks the space; study.py opens the study; plan.py derives what every worker needs; trial.py runs
one trial; worker.py runs trials until the budget is spent (in K processes too); run.py is the command;
results.py writes its table, best config and plots.
"""
