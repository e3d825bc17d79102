"""Files the tests read from the repository itself (see tests/data/aishell_ner/README.md)."""

from __future__ import annotations

from pathlib import Path

AISHELL_NER_DIR = Path(__file__).resolve().parent / "data" / "aishell_ner"
AISHELL_NER_DEV = AISHELL_NER_DIR / "aishell_ner_transcript.dev.txt"
