"""Files the pages that draw charts load: plotly.js as the plotly wheel ships it, so the charts work with no network."""

from __future__ import annotations

from pathlib import Path


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
