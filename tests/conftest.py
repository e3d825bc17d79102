"""Shared test set-up: repository paths and a quiet, deterministic environment."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONIOENCODING", "UTF-8")
os.environ.setdefault("NLTK_DATA", str(REPO_ROOT / "tools/nltk_stub"))  # no NLTK download at espnet2's import


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
