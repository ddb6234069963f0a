"""The code's shape, as issue #11 set it: imports flow one way and files stay readable.

* ``tools/check_imports.py`` finds no import cycle and no backward import (``data_pipeline`` ->
  ``pretrain`` -> ``slurm`` -> the console script's root ``perceiver_cli``); it is also part of
  ``make lint``.
* No source file is longer than 500 lines unless its module docstring says why, in a sentence
  starting "Longer than 500 lines".
"""

from __future__ import annotations

import ast
import importlib.util

from tests.conftest import REPO

MAX_LINES = 500
PACKAGES = ("data_pipeline", "pretrain", "slurm")


def _check_imports():
    path = REPO / "tools" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_or_backward_imports():
    assert _check_imports().problems() == []


def test_the_checker_finds_a_cycle_and_a_backward_import(tmp_path, monkeypatch):
    checker = _check_imports()
    for name, body in {
        "data_pipeline/__init__.py": "",
        "data_pipeline/a.py": "from data_pipeline import b\n",
        "data_pipeline/b.py": "def f():\n    import data_pipeline.a\n",
        "pretrain/__init__.py": "",
        "pretrain/c.py": "from slurm.d import x\n",
        "slurm/__init__.py": "",
        "slurm/d.py": "x = 1\n",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(body)
    monkeypatch.setattr(checker, "REPO", tmp_path)
    found = checker.problems()
    assert any(line.startswith("cycle:") and "data_pipeline.a" in line for line in found)
    assert any("backward import: pretrain/c.py:1" in line for line in found)


def test_long_files_say_why():
    unexplained = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            lines = path.read_text().count("\n")
            if lines <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "Longer than 500 lines" not in doc:
                unexplained.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert not unexplained, f"over {MAX_LINES} lines without a reason: {unexplained}"
