"""`tunesmith ui`: a local web page to see every run in a folder, watch one train, compare runs, start a new one
from a form, and try a finished model.

FastAPI, which `serve` already uses, serves pages rendered with Jinja2, and plotly.js from the plotly wheel
draws the curves: no front-end build and no network, and the pages are plain HTML a test can drive.
`runs` reads the runs folder, `launcher` starts and stops `tunesmith train`, `tryout` holds a model to try,
and `app` is the HTTP side with its guard.
"""

from __future__ import annotations

from .app import TOKEN_VARIABLE, create_app, run_ui

__all__ = ["TOKEN_VARIABLE", "create_app", "run_ui"]
