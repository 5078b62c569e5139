"""Diagnosis: a run's metric history and facts turned into findings, each with its numbers and advice (`rules`),
with the benchmark and preference findings in their own modules.
"""
