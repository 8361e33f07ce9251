"""The documentation: the MkDocs site builds strictly, the README stays short and keeps its two
commands first, and nothing points at files a clone does not have."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO

README = REPO / "README.md"
COMMANDS = [
    "bash scripts/setup.sh && EFFCN_DATA=../shared/data .venv/bin/effcn train --config "
    "configs/mnist_cpu.yaml",
    "bash scripts/setup.sh && .venv/bin/python -m pytest",
]
# Files outside the repository (the project's shared notes) and the project's issue tracker.
OUTSIDE = re.compile(r"SPEC\.md|DESIGN\.md|\.\./shared/(?!data\b)|(?-i:\bSPEC\b)|\bissues? \d+",
                     re.IGNORECASE)


def test_mkdocs_builds_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "effcn.training.evaluate" in api and "evaluate_run" in api  # docstrings rendered


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150
    code = [line for line in lines[:20] if line.startswith("bash ")]
    assert code == COMMANDS


def test_nothing_refers_to_files_outside_the_repository():
    files = [README, *(REPO / "docs").rglob("*.md"), *(REPO / "src").rglob("*.py"),
             *(REPO / "configs").glob("*.yaml"), REPO / "mkdocs.yml"]
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


def test_the_training_page_lists_every_config_field():
    import dataclasses

    from effcn.training.config import Config
    page = (REPO / "docs" / "training.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines()
            if line.startswith("| `")}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f"`{f.name}`" in rows[section.name], f"{section.name}.{f.name} is undocumented"
