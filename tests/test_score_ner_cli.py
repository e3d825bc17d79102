"""score_ner on inputs that do not line up: no shared id, empty files, blank ends, BOMs, missing/extra ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from espnet2_ext.bin import score_ner
from espnet2_ext.cli import run_cli
from espnet2_ext.scoring import score_texts
from espnet2_ext.scoring.scorer import NothingToScore

REF = "u1 [张三]在(北京)\nu2 上海下雨\nu3 今天\n"
HYP = "u1 [张山]在(北京)\nu2 上海下雨\nx9 多余\n"


def _score(tmp_path: Path, ref: str | bytes, hyp: str | bytes, capsys) -> tuple[int, str, dict | None]:
    """(exit status, stderr, result.json or None) of score_ner on the given file contents."""
    paths = {}
    for name, content in (("ref", ref), ("hyp", hyp)):
        paths[name] = tmp_path / name
        data = content.encode("utf-8") if isinstance(content, str) else content
        paths[name].write_bytes(data)
    out = tmp_path / "out"
    status = run_cli(score_ner.main, ["--ref", str(paths["ref"]), "--hyp", str(paths["hyp"]), "--out", str(out)])
    result = out / "result.json"
    summary = json.loads(result.read_text(encoding="utf-8")) if status == 0 else None
    return status, capsys.readouterr().err, summary


def test_no_shared_id_fails_with_one_line(tmp_path, capsys):
    status, err, _ = _score(tmp_path, REF, "a1 上海下雨\na2 今天\n", capsys)
    assert status == 2
    assert err == (
        f"score_ner: error: {tmp_path / 'hyp'}: none of its 2 utterance ids (e.g. a1) is in {tmp_path / 'ref'} "
        "(e.g. u1); are both of the same set?\n"
    )


def test_an_empty_reference_fails(tmp_path, capsys):
    status, err, _ = _score(tmp_path, "", HYP, capsys)
    assert (status, err) == (2, f"score_ner: error: {tmp_path / 'ref'}: no reference utterances; nothing to score\n")


def test_an_empty_hypothesis_file_fails(tmp_path, capsys):
    status, err, _ = _score(tmp_path, REF, "", capsys)
    assert (status, err) == (
        2, f"score_ner: error: {tmp_path / 'hyp'}: no hypothesis lines for the 3 utterances of {tmp_path / 'ref'}\n"
    )


def test_the_scorer_refuses_what_cannot_be_scored():
    with pytest.raises(NothingToScore, match="no reference utterances"):
        score_texts({}, {"u1": "北京"})
    with pytest.raises(NothingToScore, match="none of its 1 utterance ids"):
        score_texts({"u1": "北京"}, {"u2": "北京"})


def test_missing_and_extra_ids_are_counted_and_listed(tmp_path, capsys):
    status, err, summary = _score(tmp_path, REF, HYP, capsys)
    assert status == 0
    assert err.splitlines() == [
        f"score_ner: warning: 1 reference ids without hypothesis (scored as empty) in {tmp_path / 'hyp'}: u3",
        f"score_ner: warning: 1 hypothesis ids not in {tmp_path / 'ref'} (not scored): x9",
    ]
    counts = summary["counts"]
    assert (counts["missing_hyp_ids"], counts["extra_hyp_ids"]) == (["u3"], ["x9"])
    # u1: 三>山; u3 (missing): 今天 deleted, as an empty hypothesis (sclite's convention)
    assert (counts["ref_chars"], counts["sub"], counts["del"], counts["ins"]) == (11, 1, 2, 0)


def test_a_trailing_blank_line_is_tolerated(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _score(tmp_path / "a", REF, HYP, capsys)
    blank = _score(tmp_path / "b", REF + "\n", HYP + "\r\n", capsys)
    assert blank[0] == 0 and blank[2]["cer"] == plain[2]["cer"] and blank[2]["counts"] == plain[2]["counts"]


def test_a_byte_order_mark_does_not_change_the_score(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _score(tmp_path / "a", REF, HYP, capsys)
    bom = _score(tmp_path / "b", REF, b"\xef\xbb\xbf" + HYP.encode("utf-8"), capsys)
    assert bom[0] == 0 and bom[2]["counts"]["missing_hyp_ids"] == ["u3"]
    assert bom[2]["cer"] == plain[2]["cer"] == pytest.approx(100 * 3 / 11)
