"""The run report: report.md and report.html from a run directory's files (`writer`), and its benchmark part.
"""
