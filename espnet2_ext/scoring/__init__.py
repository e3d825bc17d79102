"""Scoring of ASR + NER output: CER, entity P/R/F1 per type and the ASR-NER error taxonomy."""

from espnet2_ext.scoring.report import render_result_markdown, render_results_tables
from espnet2_ext.scoring.scorer import ScoreResult, score_files, score_texts

__all__ = [
    "ScoreResult",
    "render_result_markdown",
    "render_results_tables",
    "score_files",
    "score_texts",
]
