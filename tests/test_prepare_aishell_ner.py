"""Stage 1 data preparation and data-directory validation, on a synthetic AISHELL-1 tree with injected faults."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers_data import AISHELL_NER_DEV

from espnet2_ext.bin.prepare_aishell_ner import main as prepare_main
from espnet2_ext.bin.validate_data_dir import main as validate_main
from espnet2_ext.data.aishell import REASONS, prepare_aishell_ner
from espnet2_ext.data.validate import validate_data_dir
from espnet2_ext.text.ner_markup import normalize_text, strip_markup

REPO = Path(__file__).resolve().parents[1]
MAKE_CORPUS = REPO / "egs" / "mini_aishell_ner" / "llm1" / "local" / "make_corpus.py"
SPLITS = ("train", "dev", "test")
KALDI_FILES = ("wav.scp", "text", "text.aishell", "utt2spk", "spk2utt", "utt2dur", "history")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [sys.executable, str(MAKE_CORPUS), "--out", str(out), "--num_train", "12", "--num_dev", "4",
         "--num_test", "4", "--num_train_spk", "2", "--num_dev_spk", "1", "--num_test_spk", "1"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture
def corpus(pristine, tmp_path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "corpus"))


def table(path: Path) -> dict[str, str]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        rows[key] = value
    return rows


def rejected(data: Path, split: str) -> dict[str, str]:
    """uttid -> reason from rejected.txt."""
    return {key: value.split()[0] for key, value in table(data / split / "rejected.txt").items()}


def run_prep(corpus: Path, out: Path, *extra: str) -> int:
    return prepare_main(["--aishell_dir", str(corpus / "data_aishell"), "--ner_dir", str(corpus / "aishell_ner"),
                         "--out", str(out), *extra])


def append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


def rewrite(path: Path, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("".join(f"{line}\n" for line in edit(lines)), encoding="utf-8")


def test_clean_corpus_gives_complete_valid_data_dirs(corpus, tmp_path, capsys):
    out = tmp_path / "data"
    assert run_prep(corpus, out, "--max_history_list", "2") == 0
    summary = capsys.readouterr().out
    assert "train         12      12         0         0" in summary
    transcript = table(corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt")
    for split in SPLITS:
        data = out / split
        assert validate_data_dir(data) == []
        ner = table(corpus / "aishell_ner" / f"aishell_ner_transcript.{split}.txt")
        files = {name: table(data / name) for name in KALDI_FILES if name != "spk2utt"}
        for name, rows in files.items():
            assert list(rows) == sorted(ner), name
            lines = (data / name).read_text(encoding="utf-8").splitlines()
            assert [line.split(" ", 1)[0] for line in lines] == sorted(ner), f"{name} not sorted"
        assert files["text"] == ner  # the AISHELL-NER text as released
        assert files["text.aishell"] == {u: transcript[u].replace(" ", "") for u in ner}
        for uttid, path in files["wav.scp"].items():
            info = soundfile.info(path)
            assert Path(path).is_absolute() and Path(path).stem == uttid
            assert float(files["utt2dur"][uttid]) == pytest.approx(info.frames / 16000, abs=1e-4)
            assert files["utt2spk"][uttid] == uttid[6:11] == Path(path).parent.name
        spk2utt = {spk: utts.split() for spk, utts in table(data / "spk2utt").items()}
        assert spk2utt == {spk: sorted(u for u in ner if u[6:11] == spk) for spk in {u[6:11] for u in ner}}
        for utts in spk2utt.values():
            for index, uttid in enumerate(utts):
                assert files["history"][uttid].split() == utts[max(0, index - 2):index]
        assert (data / "rejected.txt").read_text() == "" and (data / "text_mismatch.txt").read_text() == ""
    assert (out / "unassigned.txt").read_text() == ""


def test_every_fault_is_reported_with_its_id_and_the_rest_is_kept(corpus, tmp_path, capsys):
    root = corpus / "data_aishell"
    wav = {p.stem: p for p in (root / "wav").rglob("*.wav")}
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    ner = {s: corpus / "aishell_ner" / f"aishell_ner_transcript.{s}.txt" for s in SPLITS}
    train = sorted(u for u in wav if u < "BAC009S0724")
    dev = sorted(u for u in wav if "BAC009S0724" <= u < "BAC009S0764")
    test = sorted(u for u in wav if u >= "BAC009S0764")
    expected = {"train": {}, "dev": {}, "test": {}}

    wav[train[0]].unlink()
    expected["train"][train[0]] = "no_audio"
    soundfile.write(wav[train[1]], np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    expected["train"][train[1]] = "bad_sample_rate"
    soundfile.write(wav[train[2]], np.zeros(40 * 16000, dtype=np.int16), 16000, subtype="PCM_16")
    expected["train"][train[2]] = "too_long"
    soundfile.write(wav[train[3]], np.zeros((16000, 2), dtype=np.int16), 16000, subtype="PCM_16")
    expected["train"][train[3]] = "not_mono"
    wav[train[4]].write_bytes(b"RIFF not really a wav")
    expected["train"][train[4]] = "bad_wav"
    complete = wav[train[8]].read_bytes()
    wav[train[8]].write_bytes(complete[: len(complete) // 2])  # the header still promises all the samples
    expected["train"][train[8]] = "truncated_wav"
    ghost = train[0][:12] + "0999"  # a transcript line (AISHELL-1 and NER) without audio
    append(transcript, f"{ghost} 张伟 在 北京")
    append(ner["train"], f"{ghost} [张伟]在(北京)")
    expected["train"][ghost] = "no_audio"
    orphan = train[0][:12] + "0998"  # audio without any transcript
    shutil.copy(wav[train[5]], wav[train[5]].with_name(f"{orphan}.wav"))
    expected["train"][orphan] = "no_aishell_transcript"
    stray = wav[train[6]].parent.parent / train[0][6:11] / f"{train[6]}.wav"  # in another speaker's directory
    wav[train[6]].rename(stray)
    expected["train"][train[6]] = "speaker_mismatch"
    rewrite(ner["train"], lambda ls: [l.replace(" ", " [", 1) if l.startswith(train[7]) else l for l in ls])
    expected["train"][train[7]] = "bad_markup"
    rewrite(transcript, lambda ls: [l for l in ls if not l.startswith(dev[0])])
    expected["dev"][dev[0]] = "no_aishell_transcript"
    rewrite(ner["dev"], lambda ls: [l for l in ls if not l.startswith(dev[1])])
    rewrite(ner["dev"], lambda ls: ls[:2] + [""] + ls[2:])
    expected["dev"][dev[1]] = "no_ner_transcript"
    expected["dev"][f"{ner['dev'].name}:3"] = "malformed_line"  # a blank line between lines (not at the end)
    rewrite(ner["test"], lambda ls: ls + [l for l in ls if l.startswith(test[0])])
    expected["test"][test[0]] = "duplicate_id"
    rewrite(ner["test"], lambda ls: [l.split()[0] + " " if l.startswith(test[1]) else l for l in ls])
    expected["test"][test[1]] = "empty_text"
    rewrite(transcript, lambda ls: [l + " 了" if l.startswith(test[2]) else l for l in ls])  # kept, listed
    append(transcript, "BAC009S0999W0001 没有 这个 说话人")

    out = tmp_path / "data"
    assert run_prep(corpus, out) == 0
    summary = capsys.readouterr().out
    for split in SPLITS:
        assert rejected(out, split) == expected[split], split
        kept = set(table(out / split / "utt2spk"))
        universe = {u for u in wav if u in (train if split == "train" else dev if split == "dev" else test)}
        assert kept == universe - set(expected[split]), split
        assert validate_data_dir(out / split) == []
        counts: dict[str, int] = {}
        for reason in expected[split].values():
            counts[reason] = counts.get(reason, 0) + 1
        for reason, count in counts.items():
            assert f"{split}: {count} rejected, {reason} ({REASONS[reason]})" in summary
    assert f"train{len(train) + 2:>11}{len(train) - 8:>8}{10:>10}{0:>10}" in summary
    mismatch = (out / "test" / "text_mismatch.txt").read_text(encoding="utf-8").split()
    assert mismatch[0] == test[2] and mismatch[2] == mismatch[1] + "了"
    assert (out / "unassigned.txt").read_text(encoding="utf-8").startswith("BAC009S0999W0001 unassigned")
    assert "1 transcript lines belong to no split" in summary


def test_bom_and_crlf_transcripts_are_read_like_plain_ones(corpus, tmp_path):
    """As saved by an editor on Windows: the first utterance keeps its id, nothing is rejected."""
    transcripts = [corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt",
                   *(corpus / "aishell_ner").glob("aishell_ner_transcript.*.txt")]
    for path in transcripts:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    reports, _ = prepare_aishell_ner(corpus / "data_aishell", corpus / "aishell_ner", tmp_path / "data")
    assert [(r.split, r.kept, r.rejections) for r in reports] == [("train", 12, []), ("dev", 4, []), ("test", 4, [])]
    assert all("\ufeff" not in (tmp_path / "data" / s / "text").read_text(encoding="utf-8") for s in SPLITS)


def test_combined_ner_file_is_accepted(corpus, tmp_path):
    ner_dir = corpus / "aishell_ner"
    parts = [ner_dir / f"aishell_ner_transcript.{s}.txt" for s in SPLITS]
    (ner_dir / "aishell_ner_transcript.txt").write_text("".join(p.read_text(encoding="utf-8") for p in parts),
                                                        encoding="utf-8")
    for part in parts:
        part.unlink()
    reports, unassigned = prepare_aishell_ner(corpus / "data_aishell", ner_dir, tmp_path / "data", ["dev", "test"])
    assert [(r.split, r.kept, r.rejections) for r in reports] == [("dev", 4, []), ("test", 4, [])]
    assert unassigned == [] and not (tmp_path / "data" / "train").exists()


def test_real_aishell_ner_lines_are_kept_as_released(tmp_path):
    """Full-width letters and back-to-back entities of the real dev file against a half-width AISHELL-1 transcript."""
    lines = AISHELL_NER_DEV.read_text(encoding="utf-8").splitlines()
    picked = [l for l in lines if "ｔ恤" in l or ")(" in l][:4] + lines[:3]
    aishell, ner = tmp_path / "data_aishell", tmp_path / "aishell_ner"
    (aishell / "transcript").mkdir(parents=True)
    ner.mkdir()
    transcript = []
    for line in sorted(picked):
        uttid, text = line.split(" ", 1)
        speaker_dir = aishell / "wav" / "dev" / uttid[6:11]
        speaker_dir.mkdir(parents=True, exist_ok=True)
        soundfile.write(speaker_dir / f"{uttid}.wav", np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
        half_width = normalize_text(strip_markup(text)).lower()
        transcript.append(f"{uttid} {' '.join(half_width)}\n")  # AISHELL-1 style: spaced, half-width
    (aishell / "transcript" / "aishell_transcript_v0.8.txt").write_text("".join(transcript), encoding="utf-8")
    (ner / "aishell_ner_transcript.dev.txt").write_text("".join(f"{l}\n" for l in sorted(picked)), encoding="utf-8")
    reports, _ = prepare_aishell_ner(aishell, ner, tmp_path / "data", ["dev"])
    assert (reports[0].kept, reports[0].rejections, reports[0].mismatches) == (len(picked), [], 0)
    assert table(tmp_path / "data" / "dev" / "text") == dict(l.split(" ", 1) for l in picked)


def test_missing_inputs_fail_before_writing(corpus, tmp_path, capsys):
    (corpus / "aishell_ner" / "aishell_ner_transcript.test.txt").unlink()
    assert run_prep(corpus, tmp_path / "data") == 2
    assert "no AISHELL-NER transcript for split test" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_split_with_nothing_kept_fails(corpus, tmp_path, capsys):
    for path in (corpus / "data_aishell" / "wav" / "test").rglob("*.wav"):
        path.unlink()
    assert run_prep(corpus, tmp_path / "data", "--splits", "test") == 1
    assert "no utterance kept for test" in capsys.readouterr().err


def write_data_dir(data: Path, files: dict[str, list[str]]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (data / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_validate_data_dir_names_each_problem(tmp_path, capsys):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    good = {
        "wav.scp": [f"A1_u1 {audio}", f"A1_u2 {audio}", f"B2_u1 {audio}"],
        "text": ["A1_u1 你好", "A1_u2 再见", "B2_u1 谢谢"],
        "utt2spk": ["A1_u1 A1", "A1_u2 A1", "B2_u1 B2"],
        "spk2utt": ["A1 A1_u1 A1_u2", "B2 B2_u1"],
        "utt2dur": ["A1_u1 1.5", "A1_u2 2.0", "B2_u1 0.7"],
        "history": ["A1_u1", "A1_u2 A1_u1", "B2_u1"],
    }
    write_data_dir(tmp_path / "good", good)
    assert validate_main([str(tmp_path / "good")]) == 0
    bad = dict(good)
    truncated = tmp_path / "truncated.wav"
    soundfile.write(truncated, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    bad["wav.scp"] = [f"A1_u1 {audio}", f"A1_u2 {tmp_path / 'missing.wav'}", f"B2_u1 {truncated}"]
    bad["text"] = ["A1_u2 再见", "A1_u1 你好", "B2_u1 谢谢"]
    bad["spk2utt"] = ["A1 A1_u1", "B2 B2_u1"]
    bad["utt2dur"] = ["A1_u1 1.5", "A1_u2 zero"]
    bad["history"] = ["A1_u1 A1_u2", "A1_u2 A1_u1", "B2_u1 A1_u1 C3_u9"]
    write_data_dir(tmp_path / "bad", bad)
    assert validate_main([str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    for message in ["missing.wav does not exist", "truncated.wav is truncated: the header promises 3200 data bytes",
                    "text:2: A1_u1 comes after A1_u2: not sorted",
                    "spk2utt: A1 does not list exactly its utt2spk utterances",
                    "utt2dur: ids of utt2spk missing: 1 (B2_u1)", "A1_u2 has duration 'zero'",
                    "A1_u1: history id A1_u2 is not an earlier utterance of speaker A1",
                    "B2_u1: history id A1_u1 is not an earlier", "B2_u1: history id C3_u9 is not in utt2spk"]:
        assert message in err
    write_data_dir(tmp_path / "unsorted_speakers", {**good, "utt2spk": ["A1_u1 Z", "A1_u2 Z", "B2_u1 B2"],
                                                    "spk2utt": ["B2 B2_u1", "Z A1_u1 A1_u2"]})
    assert any("does not sort by speaker" in p for p in validate_data_dir(tmp_path / "unsorted_speakers"))
    assert validate_data_dir(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: not a directory"]
