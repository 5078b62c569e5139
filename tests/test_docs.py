"""The reference in docs/ builds as a MkDocs site with no warning, and the README's links reach its pages."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    # --strict turns every warning into a failure: a broken link or anchor, a page missing from the nav
    # (mkdocs.yml raises each kind to a warning). The banner this quiets is about Material itself, not the pages.
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr
    return out


def test_every_page_is_built(site):
    for page in (ROOT / "docs").glob("*.md"):
        html = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert html.is_file(), f"docs/{page.name} was not built"


def test_the_readme_links_reach_the_pages_and_their_headings(site):
    links = re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (ROOT / "README.md").read_text())
    assert {page for page, _ in links} >= {path.stem for path in (ROOT / "docs").glob("*.md")} - {"index"}
    for page, anchor in links:
        assert (ROOT / "docs" / f"{page}.md").is_file(), f"README links to a missing page: docs/{page}.md"
        if anchor:
            assert f'id="{anchor}"' in (site / page / "index.html").read_text(), f"README links to a missing heading: docs/{page}.md#{anchor}"
