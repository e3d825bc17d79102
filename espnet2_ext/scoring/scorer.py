"""Score hypotheses against references: CER, entity P/R/F1 and the ASR-NER taxonomy.

Both sides go through :func:`~espnet2_ext.text.ner_markup.normalize_text` first. The
reference must be valid (its markup errors raise, naming file, line and utterance). Every
reference utterance is scored: one without a hypothesis line counts as an empty hypothesis
(all deletions, every entity omitted, as sclite scores it) and is listed; hypothesis lines
without a reference are listed and ignored; a hypothesis with invalid markup is scored on its
text with the markup characters stripped, with no entities, and listed. An empty reference,
or hypotheses none of whose ids is in the reference, raise :class:`NothingToScore`: a CER of
100% over mismatched files would only mislead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espnet2_ext.errors import UserError
from espnet2_ext.scoring.alignment import Alignment, align
from espnet2_ext.scoring.cer import ErrorCounts
from espnet2_ext.scoring.ner_f1 import NerCounts, match_entities
from espnet2_ext.scoring.taxonomy import GoldVerdict, TaxonomyCounts, classify_entities
from espnet2_ext.text.kaldi_text import KaldiTextLine, read_kaldi_text_lines
from espnet2_ext.text.ner_markup import (
    Entity,
    MarkedText,
    MarkupError,
    normalize_text,
    parse_markup,
    strip_markup,
)

HYP_OK, HYP_MISSING, HYP_INVALID = "ok", "missing", "invalid_markup"


class NothingToScore(UserError):
    """The reference has no utterance, or no hypothesis id is in it (files of different sets?)."""


@dataclass(frozen=True)
class UtteranceScore:
    """Everything scored for one reference utterance (what ``detail.txt`` shows).

    ``hyp_text`` is the normalised hypothesis with its markup as written (possibly invalid);
    ``hyp_status`` is ``ok``, ``missing`` or ``invalid_markup``, explained by ``hyp_problem``.
    """

    utt_id: str
    ref: MarkedText
    hyp_text: str
    hyp: MarkedText
    hyp_status: str
    hyp_problem: str
    alignment: Alignment
    matches: list[tuple[Entity, Entity]]
    verdicts: list[GoldVerdict]


@dataclass
class ScoreResult:
    """Corpus-level totals plus the per-utterance scores."""

    ref_path: str
    hyp_path: str
    utterances: list[UtteranceScore] = field(default_factory=list)
    errors: ErrorCounts = field(default_factory=ErrorCounts)
    ner: NerCounts = field(default_factory=NerCounts)
    taxonomy: TaxonomyCounts = field(default_factory=TaxonomyCounts)
    extra_hyp_ids: list[str] = field(default_factory=list)

    def ids_with_status(self, status: str) -> list[str]:
        return [u.utt_id for u in self.utterances if u.hyp_status == status]

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` content (fractions in [0, 1] for P/R/F1, percentages elsewhere)."""
        entity_counts = self.ner.with_total()
        missing = self.ids_with_status(HYP_MISSING)
        invalid = self.ids_with_status(HYP_INVALID)
        return {
            "ref": self.ref_path,
            "hyp": self.hyp_path,
            "cer": self.errors.cer,
            "precision": {key: c.precision for key, c in entity_counts.items()},
            "recall": {key: c.recall for key, c in entity_counts.items()},
            "f1": {key: c.f1 for key, c in entity_counts.items()},
            "taxonomy": self.taxonomy.percentages(),
            "counts": {
                "utterances": len(self.utterances),
                "ref_chars": self.errors.ref_chars,
                "sub": self.errors.substitutions,
                "del": self.errors.deletions,
                "ins": self.errors.insertions,
                "missing_hyp": len(missing),
                "missing_hyp_ids": missing,
                "extra_hyp": len(self.extra_hyp_ids),
                "extra_hyp_ids": self.extra_hyp_ids,
                "invalid_hyp_markup": len(invalid),
                "invalid_hyp_markup_ids": invalid,
                "entities": {
                    key: {"gold": c.gold, "hyp": c.hyp, "matched": c.matched}
                    for key, c in entity_counts.items()
                },
                "taxonomy": {
                    "gold": self.taxonomy.gold,
                    "correct_span": self.taxonomy.correct_span,
                    "correct_entity": self.taxonomy.correct_entity,
                    "replacement": self.taxonomy.replacement,
                    "omission": self.taxonomy.omission,
                    "other_error_span": self.taxonomy.other_error_span,
                },
            },
        }


def _parse_hyp(line: KaldiTextLine | None, hyp_path: str) -> tuple[str, MarkedText, str, str]:
    """Normalise and parse a hypothesis leniently: (text, marked text, status, problem)."""
    if line is None:
        return "", MarkedText("", []), HYP_MISSING, "no hypothesis line"
    text = normalize_text(line.text)
    try:
        marked = parse_markup(text, path=hyp_path, line=line.line_no, utt_id=line.utt_id)
    except MarkupError as err:
        return text, MarkedText(strip_markup(text), []), HYP_INVALID, str(err)
    return text, marked, HYP_OK, ""


def _check_overlap(
    ref_lines: Sequence[KaldiTextLine],
    hyp_lines: Sequence[KaldiTextLine],
    ref_ids: set[str],
    ref_path: str,
    hyp_path: str,
) -> None:
    if not ref_lines:
        raise NothingToScore(f"{ref_path}: no reference utterances; nothing to score")
    if not hyp_lines:
        raise NothingToScore(
            f"{hyp_path}: no hypothesis lines for the {len(ref_lines)} utterances of {ref_path}"
        )
    if not any(line.utt_id in ref_ids for line in hyp_lines):
        raise NothingToScore(
            f"{hyp_path}: none of its {len(hyp_lines)} utterance ids (e.g. {hyp_lines[0].utt_id}) "
            f"is in {ref_path} (e.g. {ref_lines[0].utt_id}); are both of the same set?"
        )


def score_lines(
    ref_lines: Sequence[KaldiTextLine],
    hyp_lines: Sequence[KaldiTextLine],
    *,
    ref_path: str = "<ref>",
    hyp_path: str = "<hyp>",
) -> ScoreResult:
    """Score parsed Kaldi text lines (utterance ids must be unique on each side)."""
    hyp_by_id = {line.utt_id: line for line in hyp_lines}
    ref_ids = {line.utt_id for line in ref_lines}
    _check_overlap(ref_lines, hyp_lines, ref_ids, ref_path, hyp_path)
    result = ScoreResult(ref_path, hyp_path)
    result.extra_hyp_ids = [line.utt_id for line in hyp_lines if line.utt_id not in ref_ids]
    for ref_line in ref_lines:
        ref = parse_markup(
            normalize_text(ref_line.text),
            path=ref_path,
            line=ref_line.line_no,
            utt_id=ref_line.utt_id,
        )
        hyp_text, hyp, status, problem = _parse_hyp(hyp_by_id.get(ref_line.utt_id), hyp_path)
        alignment = align(ref.plain, hyp.plain)
        matches = match_entities(ref.entities, hyp.entities)
        verdicts = classify_entities(ref.entities, hyp.entities, alignment)
        result.errors.add(alignment)
        result.ner.add(ref.entities, hyp.entities, matches)
        result.taxonomy.add(verdicts)
        result.utterances.append(
            UtteranceScore(
                ref_line.utt_id, ref, hyp_text, hyp, status, problem, alignment, matches, verdicts
            )
        )
    return result


def score_texts(ref: Mapping[str, str], hyp: Mapping[str, str]) -> ScoreResult:
    """Score in-memory ``{utt_id: text}`` mappings (line numbers are positions, from 1)."""

    def as_lines(texts: Mapping[str, str]) -> list[KaldiTextLine]:
        return [KaldiTextLine(n, utt_id, text) for n, (utt_id, text) in enumerate(texts.items(), 1)]

    return score_lines(as_lines(ref), as_lines(hyp))


def score_files(ref: str | Path, hyp: str | Path) -> ScoreResult:
    """Score two Kaldi ``text`` files."""
    return score_lines(
        read_kaldi_text_lines(ref), read_kaldi_text_lines(hyp), ref_path=str(ref), hyp_path=str(hyp)
    )
