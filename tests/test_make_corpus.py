"""The mini recipe's corpus generator: AISHELL-1/AISHELL-NER layout, formats, disjoint splits, determinism,
and homophone names that only the history resolves (with the oracle that measures what that is worth)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import pytest
import soundfile

from espnet2_ext.text.ner_markup import BRACKETS, MARKUP_CHARS, parse_markup

LOCAL = Path(__file__).resolve().parents[1] / "egs" / "mini_aishell_ner" / "llm1" / "local"
SMALL = ["--num_train", "20", "--num_dev", "5", "--num_test", "5",
         "--num_train_spk", "2", "--num_dev_spk", "1", "--num_test_spk", "1"]
AISHELL_ID = re.compile(r"^BAC009(S\d{4})W\d{4}$")
SPLITS = ("train", "dev", "test")

sys.path.insert(0, str(LOCAL))
import homophone_oracle  # noqa: E402  (the recipe's local/ directory is not a package)
import lexicon  # noqa: E402
import make_corpus as corpus_maker  # noqa: E402

VOICE = "cmn-latn-pinyin"
TITLES = list(lexicon.INTRODUCTIONS.values())


def make_corpus(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCAL / "make_corpus.py"), "--out", str(out), *SMALL, *extra],
        capture_output=True, text=True, check=True,
    )


def read_lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out)
    return out


def ner_lines(corpus: Path, split: str) -> list[tuple[str, str]]:
    return read_lines(corpus / "aishell_ner" / f"aishell_ner_transcript.{split}.txt")


def test_lexicon_is_large_and_varied():
    for names in lexicon.ENTITY_TYPES.values():
        assert len(names) >= 40 and len(set(names)) == len(names)
    assert set(lexicon.ENTITY_TYPES) == set(BRACKETS)
    assert len(lexicon.TEMPLATES) >= 30
    slots = [re.findall(r"\{(\w+)\}", t) for t in lexicon.TEMPLATES]
    entity_counts = [sum(s in BRACKETS for s in slot) for slot in slots]
    assert min(entity_counts) == 0 and max(entity_counts) == 3
    assert any(len({s for s in slot if s in BRACKETS}) > 1 for slot in slots), "no template mixes types"
    assert all(s in BRACKETS or s in lexicon.FILLERS for slot in slots for s in slot)
    assert len(lexicon.INTRO_TEMPLATES) >= 10
    for template in lexicon.INTRO_TEMPLATES:
        assert template.count("{PER}") == 1 and "{TITLE} {PER}" in template, template
        assert all(s in BRACKETS or s in lexicon.FILLERS for s in re.findall(r"\{(\w+)\}", template) if s != "TITLE")


def test_every_homophone_spelling_has_its_own_title_said_nowhere_else():
    spellings = [name for group in lexicon.HOMOPHONE_GROUPS for name in group]
    assert len(lexicon.HOMOPHONE_GROUPS) >= 10 and {len(g) for g in lexicon.HOMOPHONE_GROUPS} == {2, 3}
    assert sorted(lexicon.INTRODUCTIONS) == sorted(spellings) and len(set(spellings)) == len(spellings)
    assert len(set(TITLES)) == len(TITLES)
    elsewhere = [w for names in lexicon.ENTITY_TYPES.values() for w in names]
    elsewhere += [w for fillers in lexicon.FILLERS.values() for w in fillers]
    elsewhere += list(lexicon.TEMPLATES + lexicon.INTRO_TEMPLATES)
    assert [(t, w) for t in TITLES for w in elsewhere if t in w] == []


def test_every_lexicon_character_is_read_as_one_mandarin_syllable():
    words = [w for names in lexicon.ENTITY_TYPES.values() for w in names] + TITLES
    words += [w for fillers in lexicon.FILLERS.values() for w in fillers]
    words += [re.sub(r"\{\w+\}|\s", "", t) for t in lexicon.TEMPLATES + lexicon.INTRO_TEMPLATES]
    chars = sorted(set("".join(words)))
    assert not MARKUP_CHARS.intersection(chars)
    phonemes = subprocess.run(["espeak-ng", "-v", VOICE, "-q", "-x", " ".join(chars)],
                              capture_output=True, text=True, check=True).stdout.split()
    # An unknown character is spelled out as several syllables (or as English letters).
    assert len(phonemes) == len(chars)
    assert [c for c, p in zip(chars, phonemes) if p.count("_|") != 1] == []


def test_homophone_groups_and_only_they_sound_alike():
    """Same phonemes within a group; every other person name and every title sounds unlike all others."""
    words = list(lexicon.PERSONS) + TITLES
    lines = subprocess.run(["espeak-ng", "-v", VOICE, "-q", "-x", "。".join(words)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == len(words)
    alike: dict[str, set[str]] = {}
    for word, phonemes in zip(words, lines):
        alike.setdefault(phonemes, set()).add(word)
    assert sorted(sorted(w) for w in alike.values() if len(w) > 1) == sorted(map(sorted, lexicon.HOMOPHONE_GROUPS))


def test_homophones_give_byte_identical_espeak_ng_audio():
    def audio(text: str) -> bytes:
        return subprocess.run(["espeak-ng", "-v", f"{VOICE}+f2", "-s", "160", "-p", "60", "--stdout", text],
                              capture_output=True, check=True).stdout

    for group in lexicon.HOMOPHONE_GROUPS:
        assert len({audio(f"听说{name}今天很忙") for name in group}) == 1, group
    assert audio("听说张伟今天很忙") != audio("听说张志强今天很忙")


def test_layout_ids_and_audio_format(corpus):
    wav_root = corpus / "data_aishell" / "wav"
    wavs = sorted(wav_root.rglob("*.wav"))
    assert len(wavs) == 30
    counts = {split: 0 for split in SPLITS}
    for wav in wavs:
        split, speaker, name = wav.relative_to(wav_root).parts
        match = AISHELL_ID.match(wav.stem)
        assert match and match.group(1) == speaker, wav
        counts[split] += 1
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 < info.duration < 8.0
    assert counts == {"train": 20, "dev": 5, "test": 5}
    speakers = {split: {p.name for p in (wav_root / split).iterdir()} for split in SPLITS}
    assert [len(speakers[s]) for s in SPLITS] == [2, 1, 1]
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    # AISHELL-1's speaker ranges: train below S0724, dev S0724-S0763, test from S0764.
    assert max(speakers["train"]) < "S0724" <= min(speakers["dev"]) <= max(speakers["dev"]) < "S0764"
    assert min(speakers["test"]) >= "S0764"


def test_trim_tail_keeps_the_decay_after_the_last_loud_sample():
    tail = round(corpus_maker.TAIL_SECONDS * corpus_maker.SAMPLE_RATE)
    loud = corpus_maker.TAIL_THRESHOLD + 1
    samples = np.zeros(20000, dtype=np.int16)
    samples[100:3000] = loud
    samples[3000:3005] = corpus_maker.TAIL_THRESHOLD  # at the threshold: not loud, cut with the silence
    trimmed = corpus_maker.trim_tail(samples)
    assert len(trimmed) == 3000 + tail and (trimmed[:3000] == samples[:3000]).all()
    samples[-1] = -loud  # a loud last sample (negative counts too): nothing to cut
    assert len(corpus_maker.trim_tail(samples)) == len(samples)


def test_corpus_audio_ends_within_the_kept_tail(corpus):
    tail = round(corpus_maker.TAIL_SECONDS * corpus_maker.SAMPLE_RATE)
    for wav in sorted((corpus / "data_aishell" / "wav").rglob("*.wav")):
        samples, _ = soundfile.read(str(wav), dtype="int16")
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > corpus_maker.TAIL_THRESHOLD)
        assert len(samples) - (loud[-1] + 1) == tail, wav


def test_transcripts_match_aishell_formats(corpus):
    aishell = read_lines(corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt")
    assert [uttid for uttid, _ in aishell] == sorted(uttid for uttid, _ in aishell)
    wav_ids = sorted(p.stem for p in (corpus / "data_aishell" / "wav").rglob("*.wav"))
    assert sorted(uttid for uttid, _ in aishell) == wav_ids
    words = dict(aishell)
    for text in words.values():
        assert not MARKUP_CHARS.intersection(text) and len(text.split()) > 1
        assert 8 <= len(text.replace(" ", "")) <= 20
    ner_ids = []
    for split in SPLITS:
        lines = ner_lines(corpus, split)
        assert [uttid for uttid, _ in lines] == sorted(uttid for uttid, _ in lines)
        for uttid, marked in lines:
            assert " " not in marked
            assert (corpus / "data_aishell" / "wav" / split / uttid[6:11] / f"{uttid}.wav").is_file()
            assert parse_markup(marked).plain == words[uttid].replace(" ", "")
            ner_ids.append(uttid)
    assert sorted(ner_ids) == wav_ids
    entities = [e for s in SPLITS for _, m in ner_lines(corpus, s) for e in parse_markup(m).entities]
    assert {e.type for e in entities} == set(BRACKETS)


def test_speakers_read_consecutive_sequences(corpus):
    for split in SPLITS:
        by_speaker: dict[str, list[int]] = {}
        for uttid, _ in ner_lines(corpus, split):
            by_speaker.setdefault(uttid[6:11], []).append(int(uttid[12:]))
        for numbers in by_speaker.values():
            assert numbers == list(range(1, len(numbers) + 1))
    speakers = (corpus / "speakers.txt").read_text(encoding="utf-8").splitlines()
    voices = [tuple(line.split()[2:]) for line in speakers]
    assert len(set(voices)) == len(voices) == 4


def test_splits_have_disjoint_sentences_and_eval_entities_seen_in_train(corpus):
    plain = {s: {parse_markup(m).plain for _, m in ner_lines(corpus, s)} for s in SPLITS}
    assert sum(len(p) for p in plain.values()) == 30  # no sentence repeats, even within a split
    surfaces = {s: {e.surface for _, m in ner_lines(corpus, s) for e in parse_markup(m).entities}
                for s in SPLITS}
    assert surfaces["test"] and surfaces["test"] <= surfaces["train"]
    assert surfaces["dev"] <= surfaces["train"]


def test_bare_homophone_names_are_introduced_within_two_previous_utterances(corpus):
    """Only the history resolves a bare homophone name, and 2 history utterances always do."""
    bare = 0
    for split in SPLITS:
        mentions = homophone_oracle.find_mentions(ner_lines(corpus, split))
        assert [m for m in mentions if not m.resolved_with(2)] == []
        bare += sum(not m.introduced for m in mentions)
    assert bare > 0
    named = {title: name for name, title in lexicon.INTRODUCTIONS.items()}
    aishell = read_lines(corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt")
    for uttid, text in aishell:
        words = text.split()
        assert [(w, n) for w, n in zip(words, words[1:] + [""]) if w in named and n != named[w]] == [], uttid


def test_oracle_guesses_the_names_the_history_cannot_resolve():
    lines = [("BAC009S0764W0001", "经理[章玮]在(北京)开会"), ("BAC009S0764W0002", "[章玮]很忙"),
             ("BAC009S0764W0003", "听说[章玮]很忙"), ("BAC009S0765W0001", "[章玮]和[杨磊]来了")]
    mentions = homophone_oracle.find_mentions(lines)
    assert [(m.introduced, m.distance) for m in mentions] == [(True, None), (False, 1), (False, 2), (False, None)]
    guess = {"张伟": "张伟", "章玮": "张伟"}
    hyps = {h: [text for _, text in homophone_oracle.oracle_hypothesis(lines, mentions, guess, h)]
            for h in (0, 1, 2)}
    assert hyps[0] == ["经理[章玮]在(北京)开会", "[张伟]很忙", "听说[张伟]很忙", "[张伟]和[杨磊]来了"]
    assert hyps[1][1:3] == ["[章玮]很忙", "听说[张伟]很忙"]
    assert hyps[2] == [text for _, text in lines[:3]] + ["[张伟]和[杨磊]来了"]


def test_oracle_scores_the_corpus_with_the_project_scorer(corpus, tmp_path, capsys):
    homophone_oracle.main(["--corpus", str(corpus), "--split", "test", "--out", str(tmp_path)])
    results = {h: json.loads((tmp_path / f"h{h}" / "result.json").read_text(encoding="utf-8")) for h in (0, 1, 2)}
    assert results[2]["cer"] == 0.0 and results[2]["f1"]["ALL"] == 1.0
    assert results[0]["cer"] >= results[1]["cer"] >= results[2]["cer"]
    assert "history 2: bare names resolvable in" in capsys.readouterr().out


def test_same_seed_same_bytes_and_rerun_is_skipped(corpus, tmp_path):
    again = tmp_path / "again"
    make_corpus(again)
    assert all_files(again) == all_files(corpus)
    marker_time = (again / ".done").stat().st_mtime_ns
    rerun = make_corpus(again)
    assert "skipping" in rerun.stderr
    assert (again / ".done").stat().st_mtime_ns == marker_time


def test_changed_arguments_remake_the_corpus(corpus, tmp_path):
    out = tmp_path / "other"
    make_corpus(out, "--seed", "1")
    assert ner_lines(out, "train") != ner_lines(corpus, "train")
    make_corpus(out, "--seed", "1", "--num_test", "3")  # overrides SMALL's --num_test 5
    assert len(ner_lines(out, "test")) == 3
    assert len(list((out / "data_aishell" / "wav" / "test").rglob("*.wav"))) == 3


def test_impossible_request_fails_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, str(LOCAL / "make_corpus.py"), "--out", str(tmp_path), *SMALL, "--num_dev_spk", "41"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0 and "dev: between 1 and 40 speakers" in result.stderr
    assert not (tmp_path / ".done").exists()
