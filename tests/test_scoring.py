"""Alignment, CER, entity F1, the ASR-NER taxonomy, the scorer CLI and the Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_data import AISHELL_NER_DEV

from espnet2_ext.bin import score_ner
from espnet2_ext.scoring import render_results_tables, score_files, score_texts
from espnet2_ext.scoring.alignment import align
from espnet2_ext.scoring.ner_f1 import EntityCounts, match_entities
from espnet2_ext.scoring.taxonomy import classify_entities
from espnet2_ext.text.kaldi_text import write_kaldi_text
from espnet2_ext.text.ner_markup import MarkupError, parse_markup


@pytest.fixture(scope="module")
def dev_text() -> Path:
    """The real AISHELL-NER dev transcript (kept in tests/data)."""
    return AISHELL_NER_DEV


def _ops(ref: str, hyp: str) -> str:
    return "".join(step.op for step in align(ref, hyp).ops)


# --- alignment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "hyp", "ops"),
    [
        ("北京", "北京", "CC"),
        ("北京", "背景", "SS"),
        ("abc", "", "DDD"),
        ("", "xy", "II"),
        ("", "", ""),
        ("abcd", "abd", "CCDC"),
        ("abd", "abcd", "CCIC"),
        # ties: the backtrace from the end prefers match/substitution, then deletion, then insertion
        ("aa", "a", "DC"),
        ("ab", "ba", "SS"),
        ("aba", "bab", "ICCD"),
        ("ab", "abb", "CIC"),
    ],
)
def test_alignment_ops_and_tie_preference(ref: str, hyp: str, ops: str) -> None:
    assert _ops(ref, hyp) == ops


def test_alignment_indices_and_mapping() -> None:
    alignment = align("abcd", "xbd")
    assert [tuple(step) for step in alignment.ops] == [
        ("S", 0, 0), ("C", 1, 1), ("D", 2, None), ("C", 3, 2)
    ]
    assert alignment.ref_to_hyp() == [0, 1, None, 2]


# --- CER ----------------------------------------------------------------------------------


def test_cer_counts_and_edge_cases() -> None:
    result = score_texts(
        {"u1": "北京欢迎你", "u2": "", "u3": "上海", "u4": "广州"},
        {"u1": "北京欢你们", "u2": "多余", "u3": "", "x9": "额外"},
    )
    counts = result.to_json()["counts"]
    # u1: 迎>你 你>们 (the tie with -迎 +们 goes to substitutions); u2: empty reference,
    # 2 insertions; u3: empty hypothesis and u4: missing hypothesis, 2 deletions each
    assert (counts["ref_chars"], counts["sub"], counts["del"], counts["ins"]) == (9, 2, 4, 2)
    assert result.to_json()["cer"] == pytest.approx(100 * 8 / 9)
    assert counts["utterances"] == 4
    assert (counts["missing_hyp"], counts["missing_hyp_ids"]) == (1, ["u4"])
    assert (counts["extra_hyp"], counts["extra_hyp_ids"]) == (1, ["x9"])


def test_cer_is_none_without_reference_characters() -> None:
    assert score_texts({"u1": ""}, {"u1": "多"}).to_json()["cer"] is None
    assert score_texts({"u1": ""}, {"u1": ""}).to_json()["cer"] is None


def test_scoring_normalises_both_sides() -> None:
    result = score_texts({"u1": "买了 ｔ恤 （北京）"}, {"u1": "买了T恤(北京)"}).to_json()
    assert result["cer"] == 0.0 and result["f1"]["LOC"] == 1.0


# --- entity F1 ----------------------------------------------------------------------------


def test_match_entities_is_a_multiset_match() -> None:
    gold = parse_markup("[张三]和[张三]在(北京)").entities
    hyp = parse_markup("[张三]和张山在<北京>(北京)").entities
    pairs = match_entities(gold, hyp)
    assert [(g.surface, h.surface, h.type) for g, h in pairs] == [
        ("张三", "张三", "PER"),
        ("北京", "北京", "LOC"),
    ]


def test_f1_per_type_and_zero_denominators() -> None:
    result = score_texts(
        {"u1": "[张三]和[李四]在(北京)", "u2": "<清华>"},
        {"u1": "[张三]和[李斯]在北京", "u2": "<清华>(上海)"},
    ).to_json()
    assert result["precision"]["PER"] == 0.5 and result["recall"]["PER"] == 0.5
    assert result["precision"]["LOC"] == 0.0 and result["recall"]["LOC"] == 0.0
    assert result["f1"]["LOC"] == 0.0
    assert result["f1"]["ORG"] == 1.0
    assert result["precision"]["ALL"] == pytest.approx(2 / 4)
    assert result["recall"]["ALL"] == pytest.approx(2 / 4)
    assert result["counts"]["entities"]["ALL"] == {"gold": 4, "hyp": 4, "matched": 2}
    assert EntityCounts().f1 == 0.0 and EntityCounts(gold=3).precision == 0.0
    assert EntityCounts(gold=4, hyp=2, matched=2).f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)


# --- taxonomy -----------------------------------------------------------------------------


def _categories(ref: str, hyp: str) -> list[str]:
    gold, guess = parse_markup(ref), parse_markup(hyp)
    verdicts = classify_entities(gold.entities, guess.entities, align(gold.plain, guess.plain))
    return [v.category for v in verdicts]


@pytest.mark.parametrize(
    ("ref", "hyp", "categories"),
    [
        ("[张三]在(北京)", "[张三]在(北京)", ["correct_entity", "correct_entity"]),
        ("[张三]在(北京)", "[张山]在(背景)", ["correct_span_wrong_text"] * 2),
        ("[张三]在(北京)", "<张三>在[北京]", ["replacement", "replacement"]),
        ("[张三]在(北京)", "张三在北京", ["omission", "omission"]),
        ("[张三]在(北京)", "[张]三在(北京市)", ["other_error_span", "other_error_span"]),
        ("[张三]在(北京)", "<张>三在(北京市)", ["other_error_span", "other_error_span"]),
        # entity deleted entirely: empty region, omission even though a hypothesis entity exists
        ("我[张三](北京)", "我(北京)", ["omission", "correct_entity"]),
        # region = first..last aligned character: an inner deletion keeps the span correct
        ("在(北京市)住", "在(北市)住", ["correct_span_wrong_text"]),
        # an inserted character inside the region is part of it
        ("在(北京)住", "在(北新京)住", ["correct_span_wrong_text"]),
        # an inserted character outside the region makes the hypothesis span too long
        ("在(北京)住", "在(新北京)住", ["other_error_span"]),
        (
            "(北)(上)(广)(深)",
            "(北)(上)<广>深",
            ["correct_entity", "correct_entity", "replacement", "omission"],
        ),
    ],
)
def test_taxonomy_categories(ref: str, hyp: str, categories: list[str]) -> None:
    assert _categories(ref, hyp) == categories


def test_taxonomy_flags_are_consistent() -> None:
    gold, guess = parse_markup("[张三]"), parse_markup("[张山]")
    (verdict,) = classify_entities(gold.entities, guess.entities, align(gold.plain, guess.plain))
    assert verdict.correct_span and not verdict.correct_entity
    assert not verdict.replacement and not verdict.omission
    assert verdict.region == (0, 2)


def test_taxonomy_percentages() -> None:
    result = score_texts(
        {"u1": "[张三]在(北京)", "u2": "<清华>和(上海)"},
        {"u1": "[张三]在<北京>", "u2": "清华和(上海市)"},
    ).to_json()
    assert result["taxonomy"] == pytest.approx(
        {"correct_span": 25.0, "correct_entity": 25.0, "error_span": 75.0, "replacement": 25.0,
         "omission": 25.0}
    )
    assert result["counts"]["taxonomy"]["other_error_span"] == 1
    assert score_texts({"u1": "北京"}, {"u1": "北京"}).to_json()["taxonomy"]["omission"] is None


# --- invalid input ------------------------------------------------------------------------


def test_invalid_hypothesis_markup_is_scored_without_entities() -> None:
    result = score_texts({"u1": "[张三]在(北京)", "u2": "(上海)"}, {"u1": "[张三在(北京)", "u2": "(上海)"})
    summary = result.to_json()
    assert summary["cer"] == 0.0
    assert summary["counts"]["invalid_hyp_markup_ids"] == ["u1"]
    assert summary["counts"]["entities"]["ALL"] == {"gold": 3, "hyp": 1, "matched": 1}
    assert "nested entity" in result.utterances[0].hyp_problem


def test_invalid_reference_markup_raises_with_location(tmp_path: Path) -> None:
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    write_kaldi_text(ref, [("u1", "北京"), ("u2", "在(北京")])
    write_kaldi_text(hyp, [("u1", "北京")])
    with pytest.raises(MarkupError, match=rf"^{ref}:2: utterance u2: column 2: unclosed LOC"):
        score_files(ref, hyp)


# --- files, CLI and tables ----------------------------------------------------------------


def test_reference_against_itself_on_real_dev(dev_text: Path) -> None:
    result = score_files(dev_text, dev_text).to_json()
    assert result["cer"] == 0.0
    assert result["f1"] == {"PER": 1.0, "LOC": 1.0, "ORG": 1.0, "ALL": 1.0}
    assert result["taxonomy"] == {
        "correct_span": 100.0, "correct_entity": 100.0, "error_span": 0.0, "replacement": 0.0,
        "omission": 0.0,
    }
    entities = result["counts"]["entities"]
    assert {k: v["gold"] for k, v in entities.items()} == {
        "PER": 1902, "LOC": 2588, "ORG": 2731, "ALL": 7221
    }
    assert result["counts"]["utterances"] == 14326


def test_score_ner_cli_writes_json_markdown_detail(tmp_path: Path, capsys) -> None:
    ref, hyp, out = tmp_path / "ref", tmp_path / "hyp", tmp_path / "out"
    write_kaldi_text(ref, [("u1", "[张三]在(北京)"), ("u2", "<清华>"), ("u3", "上海")])
    write_kaldi_text(hyp, [("u1", "[张山] 在 <北京>"), ("u2", "<清华"), ("u9", "多余")])
    args = ["--ref", str(ref), "--hyp", str(hyp), "--out", str(out), "--name", "Dec-only"]
    assert score_ner.main(args) == 0
    assert capsys.readouterr().out.startswith("Dec-only: CER ")
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["counts"]["missing_hyp_ids"] == ["u3"]
    assert result["counts"]["extra_hyp_ids"] == ["u9"]
    assert result["counts"]["invalid_hyp_markup_ids"] == ["u2"]
    assert result["cer"] == pytest.approx(100 * 3 / 9)
    markdown = (out / "result.md").read_text(encoding="utf-8")
    assert "| Dec-only | 33.33 | 9 | 1 | 2 | 0 |" in markdown
    assert "| Dec-only | 0.000 | 0.000 | 0.000 | 0.000 |" in markdown
    detail = (out / "detail.txt").read_text(encoding="utf-8")
    assert "u1  hyp: ok" in detail
    assert "  ops: =张 三>山 =在 =北 =京" in detail
    assert "  gold PER 张三 [0,2)  region [0,2)  correct_span_wrong_text  unmatched" in detail
    assert "  gold LOC 北京 [3,5)  region [3,5)  replacement  unmatched" in detail
    assert "u2  hyp: invalid_markup (" in detail and "  HYP: <清华\n" in detail
    assert "u3  hyp: missing" in detail
    assert "gold ORG 清华 [0,2)  region [0,2)  omission  unmatched" in detail
    assert detail.rstrip().endswith("ignored): u9")


def test_score_ner_cli_reports_bad_reference(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.write_text("u1 北京\nu1 上海\n", encoding="utf-8")
    # the command line prints it as one line (tests/test_cli_errors.py)
    with pytest.raises(ValueError, match=rf"^{ref}:2: duplicate utterance id u1"):
        score_ner.main(["--ref", str(ref), "--hyp", str(ref), "--out", str(tmp_path / "o")])


def test_render_results_tables_several_rows() -> None:
    good = score_texts({"u1": "[张三]在(北京)"}, {"u1": "[张三]在(北京)"}).to_json()
    empty = score_texts({"u1": ""}, {"u1": ""}).to_json()
    markdown = render_results_tables([("Conformer", good), ("a|b", empty)])
    assert "| Conformer | 0.00 | 5 | 0 | 0 | 0 |" in markdown
    assert "| Conformer | 1.000 | 1.000 | 0.000 | 1.000 |" in markdown
    assert "| Conformer | 100.0 | 100.0 | 0.0 | 0.0 | 0.0 |" in markdown
    assert "| a\\|b | n/a | 0 | 0 | 0 | 0 |" in markdown
    assert "| a\\|b | n/a | n/a | n/a | n/a | n/a |" in markdown
    assert markdown.index("CER") < markdown.index("F1") < markdown.index("taxonomy")
