"""AISHELL-NER markup, normalisation, Kaldi text files and the normaliser CLI."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers_data import AISHELL_NER_DEV, AISHELL_NER_DIR

from espnet2_ext.bin import normalize_ner
from espnet2_ext.text.kaldi_text import (
    KaldiTextError,
    read_kaldi_text,
    read_kaldi_text_lines,
    write_kaldi_text,
)
from espnet2_ext.text.ner_markup import (
    BRACKETS,
    ENTITY_TYPES,
    Entity,
    MarkupError,
    normalize_text,
    parse_markup,
    render_markup,
    strip_markup,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dev_lines():
    return read_kaldi_text_lines(AISHELL_NER_DEV)


# --- markup -------------------------------------------------------------------------------


def test_bracket_table_covers_the_three_types() -> None:
    assert ENTITY_TYPES == ("PER", "LOC", "ORG")
    assert BRACKETS == {"PER": ("[", "]"), "LOC": ("(", ")"), "ORG": ("<", ">")}


def test_parse_markup_spans_and_inverse() -> None:
    text = "[张三]在(北京)<清华大学>读书"
    marked = parse_markup(text)
    assert marked.plain == "张三在北京清华大学读书"
    assert marked.entities == [
        Entity("PER", 0, 2, "张三"),
        Entity("LOC", 3, 5, "北京"),
        Entity("ORG", 5, 9, "清华大学"),
    ]
    assert render_markup(marked.plain, marked.entities) == text


def test_adjacent_entities() -> None:
    marked = parse_markup("投资于(北)(上)(广)(深)的项目")
    assert [(e.surface, e.start, e.end) for e in marked.entities] == [
        ("北", 3, 4), ("上", 4, 5), ("广", 5, 6), ("深", 6, 7)
    ]
    assert render_markup(marked.plain, marked.entities) == "投资于(北)(上)(广)(深)的项目"


def test_text_without_entities() -> None:
    assert parse_markup("相比于其他一线城市").entities == []
    assert parse_markup("").plain == ""


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("[张三在北京", 1, "unclosed PER entity"),
        ("[张(三)]", 3, "nested entity"),
        ("在()北京", 3, "empty LOC entity"),
        ("北京]在", 3, "stray closing bracket ']'"),
        ("<清华>大学>", 7, "stray closing bracket '>'"),
        ("[张三)", 4, "does not match '['"),
    ],
)
def test_invalid_markup_names_location_and_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(MarkupError) as caught:
        parse_markup(text, path="data/text", line=7, utt_id="UTT7")
    err = caught.value
    assert err.column == column
    assert reason in err.reason
    assert str(err).startswith(f"data/text:7: utterance UTT7: column {column}: ")


def test_markup_error_without_location() -> None:
    with pytest.raises(MarkupError, match=r"^column 1: stray closing bracket"):
        parse_markup(")")
    assert issubclass(MarkupError, ValueError)


def test_render_markup_rejects_inconsistent_entities() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        render_markup("北京上海", [Entity("LOC", 0, 3, "北京上"), Entity("LOC", 2, 4, "上海")])
    with pytest.raises(ValueError, match="does not match"):
        render_markup("北京上海", [Entity("LOC", 0, 2, "上海")])
    with pytest.raises(ValueError, match="outside"):
        render_markup("北京", [Entity("LOC", 1, 3, "京上")])
    with pytest.raises(ValueError, match="markup characters"):
        render_markup("北(京", [])


def test_entity_validates_itself() -> None:
    with pytest.raises(ValueError, match="unknown entity type"):
        Entity("MISC", 0, 1, "x")
    with pytest.raises(ValueError, match="inconsistent"):
        Entity("PER", 0, 2, "x")
    with pytest.raises(ValueError, match="inconsistent"):
        Entity("PER", 1, 1, "")


def test_strip_markup_removes_only_the_six_characters() -> None:
    assert strip_markup("[张(三>在《北京》") == "张三在《北京》"


# --- normalisation ------------------------------------------------------------------------


def test_normalize_fullwidth_brackets_letters_digits() -> None:
    assert normalize_text("（北京）［张三］＜清华＞") == "(北京)[张三]<清华>"
    assert normalize_text("黑色ｔ恤五ａ级Ｔ恤ＸＬ号０１２３９") == "黑色T恤五A级T恤XL号01239"
    assert normalize_text("iPhone6s") == "IPHONE6S"


def test_normalize_leaves_other_cjk_punctuation() -> None:
    text = "【通知】〈一〉《人民日报》「好」，。？！"
    assert normalize_text(text) == text


def test_normalize_removes_all_whitespace() -> None:
    assert normalize_text(" 而 在\t股市\u3000大幅 震荡\u00a0的 ") == "而在股市大幅震荡的"
    assert normalize_text("广州 市 房地产") == normalize_text("广州市房地产")


def test_normalize_is_idempotent_on_real_data(dev_lines) -> None:
    for line in dev_lines:
        once = normalize_text(line.text)
        assert normalize_text(once) == once


# --- real AISHELL-NER dev annotations -----------------------------------------------------


def test_real_dev_counts_and_round_trip(dev_lines) -> None:
    assert len(dev_lines) == 14326
    counts: Counter[str] = Counter()
    adjacent = 0
    for line in dev_lines:
        marked = parse_markup(line.text, line=line.line_no, utt_id=line.utt_id)
        counts.update(e.type for e in marked.entities)
        adjacent += sum(a.end == b.start for a, b in zip(marked.entities, marked.entities[1:]))
        assert render_markup(marked.plain, marked.entities) == line.text
        assert strip_markup(line.text) == marked.plain
    assert counts == {"PER": 1902, "LOC": 2588, "ORG": 2731}
    assert adjacent > 0


def test_real_dev_bio_agrees_with_markup(dev_lines) -> None:
    blocks = (AISHELL_NER_DIR / "dev.bio.txt").read_text(encoding="utf-8").split("\n\n")
    assert blocks[-1] == ""
    blocks = blocks[:-1]
    assert len(blocks) == len(dev_lines)
    labels = set((AISHELL_NER_DIR / "labels.bio.txt").read_text(encoding="utf-8").split())
    assert labels == {"O"} | {f"{p}-{t}" for t in ENTITY_TYPES for p in "BI"}
    for block, line in zip(blocks, dev_lines):
        marked = parse_markup(line.text)
        expected = ["O"] * len(marked.plain)
        for entity in marked.entities:
            expected[entity.start] = f"B-{entity.type}"
            inside = len(entity.surface) - 1
            expected[entity.start + 1 : entity.end] = [f"I-{entity.type}"] * inside
        rows = [row.split(" ") for row in block.split("\n")]
        assert "".join(char for char, _ in rows) == marked.plain, line.utt_id
        assert [tag for _, tag in rows] == expected, line.utt_id


# --- Kaldi text files ---------------------------------------------------------------------


def test_kaldi_text_round_trip_keeps_order_and_empty_text(tmp_path: Path) -> None:
    path = tmp_path / "text"
    items = [("u2", "北京 欢迎 你"), ("u1", ""), ("u3", "[张三]")]
    write_kaldi_text(path, items)
    assert path.read_text(encoding="utf-8") == "u2 北京 欢迎 你\nu1\nu3 [张三]\n"
    assert list(read_kaldi_text(path).items()) == items


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"u1 a\nu1 b\n", r"text:2: duplicate utterance id u1 \(first at line 1\)"),
        (b"u1 a\n\nu2 b\n", r"text:2: blank line"),
        (b"u1 a\n u2 b\n", r"text:2: line starts with whitespace"),
        (b"u1 a\nu2 \xff\n", r"text:2: invalid UTF-8"),
    ],
)
def test_kaldi_text_errors_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "text"
    path.write_bytes(content)
    with pytest.raises(KaldiTextError, match=message):
        read_kaldi_text(path)


def test_write_kaldi_text_rejects_bad_items(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid utterance id"):
        write_kaldi_text(tmp_path / "t", [("u 1", "x")])
    with pytest.raises(ValueError, match="line break"):
        write_kaldi_text(tmp_path / "t", [("u1", "x\ny")])


# --- normaliser CLI -----------------------------------------------------------------------


def _rejected_rows(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#")
    return [line.split("\t") for line in lines[1:]]


def test_normalize_cli_keeps_valid_and_lists_rejected(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(
        "\n".join(
            [
                "U1 （北京） 欢迎 你",
                "U2 ［张三］ 买了 ｔ恤 和 ５ａ级",
                "U3 [张三在北京",
                "U4",
                "U1 重复",
                "",
                "U5 <清华>>",
                "U6 (北京)[张(三)]",
                "U7 北京 在 ()",
            ]
        ).encode("utf-8")
        + b"\nU8 \xfe\n"
    )
    out, rejected = tmp_path / "out.txt", tmp_path / "rejected.txt"
    code = normalize_ner.main(["--in", str(source), "--out", str(out), "--rejected", str(rejected)])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"{source}: total=10 kept=2 rejected=8"
    assert out.read_text(encoding="utf-8") == "U1 (北京)欢迎你\nU2 [张三]买了T恤和5A级\n"
    rows = _rejected_rows(rejected)
    assert [row[:2] for row in rows] == [
        [f"{source}:3", "U3"],
        [f"{source}:4", "U4"],
        [f"{source}:5", "U1"],
        [f"{source}:6", "-"],
        [f"{source}:7", "U5"],
        [f"{source}:8", "U6"],
        [f"{source}:9", "U7"],
        [f"{source}:10", "-"],
    ]
    reasons = [row[2] for row in rows]
    assert reasons[0] == "column 1: unclosed PER entity '['"
    assert reasons[1] == "empty text after normalisation"
    assert reasons[2] == "duplicate utterance id U1 (first at line 1)"
    assert reasons[3].startswith("blank line")
    assert reasons[4] == "column 5: stray closing bracket '>'"
    assert reasons[5].startswith("column 7: nested entity")
    assert reasons[6] == "column 5: empty LOC entity"
    assert reasons[7].startswith("invalid UTF-8")
    assert rows[5][3] == "(北京)[张(三)]"


def test_normalize_cli_strict_and_io_errors(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("U1 (北京\n", encoding="utf-8")
    args = ["--out", str(tmp_path / "o"), "--rejected", str(tmp_path / "r")]
    assert normalize_ner.main(["--in", str(source), *args]) == 0
    assert normalize_ner.main(["--in", str(source), "--strict", *args]) == 1
    assert normalize_ner.main(["--in", str(tmp_path / "absent"), *args]) == 2


def test_normalize_cli_on_real_dev_as_module(tmp_path: Path) -> None:
    source = AISHELL_NER_DEV
    out, rejected = tmp_path / "out.txt", tmp_path / "rejected.txt"
    run = subprocess.run(
        [sys.executable, "-m", "espnet2_ext.bin.normalize_ner", "--in", str(source),
         "--out", str(out), "--rejected", str(rejected), "--strict"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{source}: total=14326 kept=14326 rejected=0"
    normalised = read_kaldi_text(out)
    original = read_kaldi_text(source)
    assert list(normalised) == list(original)
    changed = {k for k in original if original[k] != normalised[k]}
    assert {k: normalised[k] for k in changed} == {
        "BAC009S0737W0408": "[蔡卓妍]穿着黑色T恤",
        "BAC009S0739W0467": "<国家旅游局>宣布撤销对(五台山)五A级景区的警告处分",
        "BAC009S0748W0439": "(昆明)工友聚餐K歌变群殴民警鸣枪示警",
        "BAC009S0761W0385": "现役球员里我最喜欢[C罗]",
    }
