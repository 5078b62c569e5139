"""Evaluation: a model's loss, perplexity and task metrics on a dataset (`scoring`), and what fine-tuning cost it
elsewhere, measured on a fixed probe of general text (`forgetting`).
"""
