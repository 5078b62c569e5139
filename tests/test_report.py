"""The run report: report.md and a self-contained report.html, checked in a real browser (headless Chromium)."""

import subprocess

import numpy as np
import pytest

from tunesmith import train
from tunesmith.cli import main

from helpers import CHROMIUM, CHROMIUM_FLAGS, make_corpus, run_config, write_jsonl



@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory):

    root = tmp_path_factory.mktemp("report")
    import os

    os.environ.setdefault("TUNESMITH_HOME", str(root / "home"))
    data = write_jsonl(root / "corpus.jsonl", make_corpus(120))
    train(run_config(tiny_llama, data, root / "run", max_steps=12, eval_every=4))
    return root / "run"


def test_report_files_hold_curves_findings_samples_and_config(finished_run):
    markdown = (finished_run / "report.md").read_text()
    for heading in ("## Base against fine-tuned", "## Curves", "## Findings", "## Samples, before and after", "## Data",
                    "## Hardware and timing", "## Config"):
        assert heading in markdown
    assert "transfer_gain" in markdown and (finished_run / "report_files" / "loss.png").is_file()
    page = (finished_run / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and 'data-kind="transfer_gain"' in page and 'id="plot-forgetting"' in page


def test_report_command_rewrites_the_report(finished_run, capsys):
    (finished_run / "report.html").unlink()
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.html").is_file() and "wrote" in capsys.readouterr().out


def test_a_report_replaces_links_in_the_run_folder_and_never_writes_through_them(finished_run, tmp_path):
    """A run folder from someone else may hold `report.html -> ~/notes.txt`."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    notes, pictures = tmp_path / "notes.txt", tmp_path / "pictures"
    notes.write_text("my notes")
    pictures.mkdir()
    for name in ("report.html", "report.md"):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(notes)
    shutil.rmtree(run / "report_files")
    (run / "report_files").symlink_to(pictures)
    assert main(["report", str(run)]) == 0
    assert notes.read_text() == "my notes" and not any(pictures.iterdir())
    assert not (run / "report.html").is_symlink() and (run / "report_files" / "loss.png").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_report_renders_in_chromium(finished_run, tmp_path):
    from PIL import Image

    url = (finished_run / "report.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'id="findings"' in dom and "transfer_gain" in dom and dom.count('class="plot"') == 4 and 'id="forgetting"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1000,2400", "--hide-scrollbars", url], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = (np.abs(pixels - np.array([31, 119, 180])).sum(axis=2) < 40).sum()  # matplotlib's first line colour
    red = (np.abs(pixels - np.array([196, 78, 82])).sum(axis=2) < 40).sum()  # the perplexity curve
    assert blue > 200 and red > 100, "the plots did not render"
