"""Imports flow one way: the import-linter contracts in pyproject.toml hold for the whole package."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_branch_on_a_task_or_method_name_outside_their_packages():
    """What differs between tasks (or training methods) lives in the task's (method's) own module."""
    import re

    branch = re.compile(r"(?<!request\.)\b(task|method)\s*(==|!=|\bin\b|\bnot in\b)\s*[(\[{]?\s*[\"']")
    package = ROOT / "src" / "tunesmith"
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in package.rglob("*.py") if path.relative_to(package).parts[0] not in ("tasks", "methods")
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if branch.search(line)]
    assert not found, "\n".join(found)
