"""The Python blocks of README.md and docs/ run as tests (pytest-markdown-docs,
``--markdown-docs``). Each runs in a fresh directory, as a reader's would be, that sees the
repository's configs/, experiments/ and examples/, so that what a block writes (``runs/``,
``out/``) lands in pytest's temporary directory, not in the checkout."""
from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = ("configs", "experiments", "examples")


@pytest.fixture(autouse=True)
def _markdown_blocks_run_in_a_fresh_directory(request, tmp_path, monkeypatch):
    if not str(request.node.fspath).endswith(".md"):
        yield
        return
    for name in SHARED:
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    yield
