"""Human-readable scoring output: paper-style Markdown tables and the per-utterance detail.

:func:`render_results_tables` lays out one or more ``result.json`` dicts like the paper's
Table 2 (CER), Table 3 (F1 per type) and Table 4 (taxonomy); the recipe's RESULTS.md stage
calls it. :func:`render_result_markdown` adds one system's counts and the definitions;
:func:`render_detail` writes every utterance's alignment and entity verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from espnet2_ext.scoring.alignment import DELETION, INSERTION, MATCH, SUBSTITUTION
from espnet2_ext.scoring.ner_f1 import ALL
from espnet2_ext.scoring.scorer import ScoreResult, UtteranceScore
from espnet2_ext.text.ner_markup import ENTITY_TYPES, Entity, render_markup

_TAXONOMY_COLUMNS = (
    ("correct_span", "Cor. Span"),
    ("correct_entity", "Cor. Ent."),
    ("error_span", "Err. Span"),
    ("replacement", "Rep."),
    ("omission", "Omi."),
)
_SHOWN_IDS = 10

DEFINITIONS = """\
- CER (%) = 100 · (sub + del + ins) / reference characters, on markup-free text after
  normalisation (full-width letters, digits and brackets to ASCII, Latin upper-cased,
  whitespace removed); n/a without reference characters.
- Entities match per utterance as multisets of (type, surface), micro-averaged over the set;
  P, R and F1 are 0 when their denominator is 0.
- Taxonomy (% of gold entities): the region of a gold entity is the span of hypothesis
  characters aligned (match/substitution) to its characters. Cor. Span: a hypothesis entity
  of the same type spans exactly the region; Cor. Ent.: and has the same surface;
  Err. Span = 100 − Cor. Span; Rep.: an entity of another type spans the region;
  Omi.: no hypothesis entity overlaps the region (or it is empty).
- A reference utterance without a hypothesis line is scored as an empty hypothesis;
  hypothesis lines without a reference are ignored; a hypothesis with invalid markup is
  scored on its text with the markup removed and no entities.
"""


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rule = "|".join(["---"] + ["--:"] * (len(header) - 1))
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_results_tables(
    rows: list[tuple[str, dict[str, Any]]], entity_rows: Sequence[str] | None = None
) -> str:
    """Markdown CER, F1-per-type and taxonomy tables, one row per ``(name, result.json)``.

    ``entity_rows`` names the rows shown in the F1 and taxonomy tables (default: all);
    plain-ASR decodings carry no markup, so their zero F1 would only mislead.
    """
    names = [name.replace("|", "\\|") for name, _ in rows]
    results = [result for _, result in rows]
    keep = [entity_rows is None or name in entity_rows for name, _ in rows]
    cer_rows = [
        [name, _number(r["cer"], 2)]
        + [str(r["counts"][key]) for key in ("ref_chars", "sub", "del", "ins")]
        for name, r in zip(names, results)
    ]
    f1_rows = [
        [name] + [_number(r["f1"][key], 3) for key in (*ENTITY_TYPES, ALL)]
        for name, r, k in zip(names, results, keep)
        if k
    ]
    taxonomy_rows = [
        [name] + [_number(r["taxonomy"][key], 1) for key, _ in _TAXONOMY_COLUMNS]
        for name, r, k in zip(names, results, keep)
        if k
    ]
    return "\n\n".join(
        [
            "### ASR: CER (%)",
            _table(["System", "CER (%)", "Ref. chars", "Sub.", "Del.", "Ins."], cer_rows),
            "### NER: F1",
            _table(["System", *ENTITY_TYPES, "Total"], f1_rows),
            "### NER taxonomy (% of gold entities)",
            _table(["System"] + [title for _, title in _TAXONOMY_COLUMNS], taxonomy_rows),
        ]
    )


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_SHOWN_IDS]) + (", ..." if len(ids) > _SHOWN_IDS else "")
    return f"{len(ids)}" + (f" ({shown})" if ids else "")


def render_result_markdown(name: str, result: dict[str, Any]) -> str:
    """``result.md``: the three tables, P/R/F1 with entity counts, input problems, definitions."""
    counts = result["counts"]
    entity_rows = [
        [key]
        + [str(counts["entities"][key][k]) for k in ("gold", "hyp", "matched")]
        + [_number(result[k][key], 3) for k in ("precision", "recall", "f1")]
        for key in (*ENTITY_TYPES, ALL)
    ]
    return "\n\n".join(
        [
            f"# Scoring: {name}",
            f"Reference `{result['ref']}`, hypothesis `{result['hyp']}`, "
            f"{counts['utterances']} reference utterances.",
            render_results_tables([(name, result)]),
            "### Entities",
            _table(["Type", "Gold", "Hyp.", "Matched", "P", "R", "F1"], entity_rows),
            "### Input problems",
            "\n".join(
                [
                    f"- missing hypothesis (scored as empty): {_ids(counts['missing_hyp_ids'])}",
                    f"- extra hypothesis (ignored): {_ids(counts['extra_hyp_ids'])}",
                    "- invalid hypothesis markup (scored without entities): "
                    f"{_ids(counts['invalid_hyp_markup_ids'])}",
                ]
            ),
            "### Definitions",
            DEFINITIONS,
        ]
    )


def _format_ops(utterance: UtteranceScore) -> str:
    ref, hyp = utterance.alignment.ref, utterance.alignment.hyp
    tokens = []
    for step in utterance.alignment.ops:
        if step.op == MATCH:
            tokens.append(f"={ref[step.ref_index]}")
        elif step.op == DELETION:
            tokens.append(f"-{ref[step.ref_index]}")
        elif step.op == INSERTION:
            tokens.append(f"+{hyp[step.hyp_index]}")
        else:
            tokens.append(f"{ref[step.ref_index]}>{hyp[step.hyp_index]}")
    return " ".join(tokens)


def _span(entity: Entity) -> str:
    return f"{entity.type} {entity.surface} [{entity.start},{entity.end})"


def _format_utterance(utterance: UtteranceScore) -> list[str]:
    alignment = utterance.alignment
    status = utterance.hyp_status + (f" ({utterance.hyp_problem})" if utterance.hyp_problem else "")
    matched_gold = {id(g) for g, _ in utterance.matches}
    matched_hyp = {id(h) for _, h in utterance.matches}
    lines = [
        f"{utterance.utt_id}  hyp: {status}",
        f"  REF: {render_markup(utterance.ref.plain, utterance.ref.entities)}",
        f"  HYP: {utterance.hyp_text}",
        f"  ref plain: {utterance.ref.plain}",
        f"  hyp plain: {utterance.hyp.plain}",
        f"  ops: {_format_ops(utterance)}",
        f"  chars {len(alignment.ref)}  sub {alignment.count(SUBSTITUTION)}"
        f"  del {alignment.count(DELETION)}  ins {alignment.count(INSERTION)}",
    ]
    for verdict in utterance.verdicts:
        region = "empty" if verdict.region is None else f"[{verdict.region[0]},{verdict.region[1]})"
        f1 = "matched" if id(verdict.entity) in matched_gold else "unmatched"
        lines.append(f"  gold {_span(verdict.entity)}  region {region}  {verdict.category}  {f1}")
    for entity in utterance.hyp.entities:
        f1 = "matched" if id(entity) in matched_hyp else "unmatched"
        lines.append(f"  hyp  {_span(entity)}  {f1}")
    return lines


def render_detail(result: ScoreResult) -> str:
    """``detail.txt``: per utterance the texts, the alignment ops and every entity's verdict."""
    lines = [
        f"# ref {result.ref_path}  hyp {result.hyp_path}",
        "# ops: =x match, x>y substitution, -x deletion, +y insertion;"
        " spans are [start,end) character offsets into the plain text;",
        "# gold categories: correct_entity, correct_span_wrong_text, replacement, omission,"
        " other_error_span; matched/unmatched refers to the (type, surface) F1 match.",
        "",
    ]
    for utterance in result.utterances:
        lines += _format_utterance(utterance) + [""]
    if result.extra_hyp_ids:
        extra = " ".join(result.extra_hyp_ids)
        lines.append(f"# hypothesis lines without reference (ignored): {extra}")
    return "\n".join(lines) + "\n"
