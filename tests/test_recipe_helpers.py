"""Small recipe helpers: speaker-preserving job splits and the Conformer's character token list."""
from __future__ import annotations

from collections import OrderedDict

import pytest

from espnet2_ext.bin.make_char_token_list import char_token_list
from espnet2_ext.bin.split_by_speaker import main as split_main
from espnet2_ext.data.splits import read_utt2spk, split_by_speaker


def test_split_keeps_speakers_whole_and_balances(tmp_path):
    utt2spk = tmp_path / "utt2spk"
    lines = [f"S{s}_U{u} S{s}" for s, n in ((1, 5), (2, 3), (3, 2), (4, 1)) for u in range(n)]
    utt2spk.write_text("\n".join(lines) + "\n", encoding="utf-8")
    split_main(["--utt2spk", str(utt2spk), "--nj", "2", "--out", str(tmp_path / "keys")])
    jobs = [(tmp_path / f"keys.{i}").read_text().split() for i in (1, 2)]
    assert sorted(sum(jobs, [])) == sorted(line.split()[0] for line in lines)
    for job in jobs:
        spk_of = {u.split("_")[0] for u in job}
        other = jobs[1] if job is jobs[0] else jobs[0]
        assert not spk_of & {u.split("_")[0] for u in other}
    assert sorted(len(j) for j in jobs) == [5, 6]


def test_split_rejects_more_jobs_than_speakers():
    with pytest.raises(ValueError, match="number of speakers"):
        split_by_speaker(OrderedDict(a=["u1"]), 2)


def test_read_utt2spk_names_bad_line(tmp_path):
    bad = tmp_path / "utt2spk"
    bad.write_text("u1 s1\nu2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"utt2spk:2"):
        read_utt2spk(bad)


def test_char_token_list_layout():
    tokens = char_token_list(["[张伟]在(北京)", "在<清华>"])
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert tokens[2] == "在"
    assert {"[", "]", "(", ")", "<", ">"} <= set(tokens)
    assert len(tokens) == len(set(tokens))


def test_make_results_collects_rows_and_commands(tmp_path):
    import json

    from espnet2_ext.bin.make_results import main as results_main

    def result(cer: float, f1: float) -> dict:
        per = {k: f1 for k in ("PER", "LOC", "ORG", "ALL")}
        tax = {k: 50.0 for k in ("correct_span", "correct_entity", "error_span", "replacement", "omission")}
        counts = {"ref_chars": 100, "sub": 1, "del": 1, "ins": 0}
        return {"cer": cer, "precision": per, "recall": per, "f1": per, "taxonomy": tax, "counts": counts}

    for sub, res in (("decoder_only/decode_phase3_ner_his1", result(2.0, 0.812)),
                     ("decoder_only/decode_phase1_asr_his0", result(3.5, 0.0))):
        score = tmp_path / sub / "test" / "score"
        score.mkdir(parents=True)
        (score / "result.json").write_text(json.dumps(res))
        (tmp_path / sub / "test" / "log").mkdir()
        (tmp_path / sub / "test" / "log" / "decode.1.log").write_text(f"# python -m decode {sub}\n")
    (tmp_path / "decoder_only" / "phase3").mkdir()
    (tmp_path / "decoder_only" / "phase3" / "train.log").write_text("# python -m train phase3\nrest\n")
    out = tmp_path / "RESULTS.md"
    results_main(["--expdir", str(tmp_path), "--test_sets", "test", "--out", str(out), "--command", "./run.sh"])
    text = out.read_text()
    assert "| decoder_only phase3 ner his=1 | 2.00 |" in text
    assert "| decoder_only phase1 asr his=0 | 3.50 |" in text
    f1_table = text.split("### NER: F1")[1].split("###")[0]
    assert "0.812" in f1_table and "phase1 asr" not in f1_table
    assert "python -m train phase3" in text and "python -m decode decoder_only/decode_phase3_ner_his1" in text


def _tiny_tokenizer(tmp_path, symbols):
    from espnet2_ext.text.chatglm3_tokenizer import ChatGLM3Tokenizer, train_sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["张伟在北京工作", "李娜去上海", "清华大学很好", "中国银行"] * 20) + "\n", encoding="utf-8")
    return ChatGLM3Tokenizer(train_sentencepiece(corpus, tmp_path / "sp", 40, symbols))


def test_check_tokenizer_passes_with_markup_and_markers(tmp_path):
    from espnet2_ext.bin.check_tokenizer import check
    from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS

    tok = _tiny_tokenizer(tmp_path, [*TASK_TOKENS, "[", "]", "(", ")", "<", ">"])
    report = check(tok, {"u1": "[张伟]在(北京)工作", "u2": "<中国银行>", "u3": "王五"})
    assert report["unknown_required"] == []
    assert report["utterances_with_unk"] == ["u3"]
    assert report["round_trip_failures"] == []


def test_check_tokenizer_flags_missing_markup(tmp_path):
    from espnet2_ext.bin.check_tokenizer import check

    tok = _tiny_tokenizer(tmp_path, ["|asr|"])
    report = check(tok, {"u1": "张伟"})
    assert "|ner|" in report["unknown_required"] and "[" in report["unknown_required"]
