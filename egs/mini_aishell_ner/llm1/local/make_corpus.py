#!/usr/bin/env python3
"""Stage 0 of the mini recipe: synthesise a small corpus laid out exactly like AISHELL-1 + AISHELL-NER.

Sentences come from templates filled with person, place and organisation names
(lexicon.py); espeak-ng's Mandarin voice reads them with distinct speaker voices.
The layout is the real corpora's, so the full recipe's data preparation reads it
unchanged::

    OUT/data_aishell/wav/{train,dev,test}/S0002/BAC009S0002W0001.wav   16 kHz mono 16-bit
    OUT/data_aishell/transcript/aishell_transcript_v0.8.txt            uttid 词 词 词 (all splits)
    OUT/aishell_ner/aishell_ner_transcript.{train,dev,test}.txt        uttid text-with-markup
    OUT/speakers.txt                                                    speaker split voice speed pitch

Design choices, and why:
- Context matters the way it does in the paper, where Chinese person names are hard
  because of homophones. Each speaker reads consecutive three-sentence stories. Most
  stories are about one person whose name has homophones in the corpus (lexicon.
  HOMOPHONE_GROUPS: espeak-ng reads 张伟 and 章玮 identically): the first sentence
  introduces the name with the one title that always comes with that spelling
  ("经理 章玮"), the next two say it bare. Without history a bare name is a guess among
  its group; with 1 history utterance the first bare mention is resolvable, with 2 both
  are. Consecutive stories of a speaker never share a group, so a history never holds a
  rival spelling. The other stories keep to names that sound like no other name.
- Sentences are unique across the whole corpus, so dev/test hold only new
  combinations; dev/test draw their entities and homophone names from those spoken in
  train, because tiny models cannot learn unseen names from a few thousand utterances.
- espeak-ng ends every sentence with ~0.35 s of silence; it is cut to ``TAIL_SECONDS`` after
  the last sample above ``TAIL_THRESHOLD`` (-40 dBFS), so no system spends ~9% of its compute
  on it (Whisper encodes silence into speech tokens as readily as speech).
- Output is a pure function of the arguments and this code: ``sox -D`` (no
  dither) and integer trimming make wav files byte-identical across runs, and an ``OUT/.done`` marker
  holding the settings makes a rerun with the same settings a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import soundfile as sf

from espnet2_ext.text.ner_markup import BRACKETS, parse_markup
from lexicon import (FILLERS, HOMOPHONE_GROUPS, INTRO_TEMPLATES, INTRODUCTIONS, LOCATIONS, ORGANIZATIONS,
                     TEMPLATES, UNAMBIGUOUS_PERSONS)

SPLITS = ("train", "dev", "test")
# AISHELL-1's speaker numbering: train S0002-S0723, dev S0724-S0763, test S0764-S0916.
SPEAKER_RANGES = {"train": (2, 723), "dev": (724, 763), "test": (764, 916)}
UTT_PREFIX = "BAC009"
ESPEAK_VOICE = "cmn-latn-pinyin"
VOICE_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
SPEEDS = tuple(range(150, 211, 10))  # words per minute; slower voices make too long utterances
PITCHES = tuple(range(30, 71, 5))
MIN_CHARS, MAX_CHARS = 8, 20
STORY_LENGTH = 3  # an introduction and two bare mentions: each within 2 utterances of it
NAMED_STORY_PROBABILITY = 0.75  # share of stories about a homophone name
FOCUS_PROBABILITY = 0.6  # chance that an entity slot takes the story's entity
MIN_EVAL_POOL = 3  # below this many train-seen entities of a type, dev/test use the full list
MAX_TRIES = 2000  # attempts to find a new sentence before giving up
NER_TRANSCRIPT = "aishell_ner_transcript.{split}.txt"
AISHELL_TRANSCRIPT = "aishell_transcript_v0.8.txt"
GROUP_OF = {name: group for group in HOMOPHONE_GROUPS for name in group}
MENTION_TEMPLATES = tuple(t for t in TEMPLATES if "{PER}" in t.split())


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an AISHELL-style id and the espeak-ng settings that make the voice."""

    spk_id: str
    split: str
    variant: str
    speed: int
    pitch: int

    @property
    def voice(self) -> str:
        return f"{ESPEAK_VOICE}+{self.variant}"


@dataclass(frozen=True)
class Utterance:
    """One sentence read by one speaker: its words (AISHELL-1 transcript) and its marked-up text (AISHELL-NER)."""

    uttid: str
    speaker: Speaker
    words: tuple[str, ...]
    marked: str

    @property
    def plain(self) -> str:
        return "".join(self.words)


@dataclass(frozen=True)
class Pools:
    """What a split's sentences draw names from."""

    entities: dict[str, Sequence[str]]  # per entity type; PER holds only names without homophones
    homophones: Sequence[str]  # the homophone spellings stories introduce


@dataclass(frozen=True)
class Story:
    """What one speaker's next STORY_LENGTH sentences keep returning to."""

    focus: dict[str, str]  # an entity per type, taken by a slot with FOCUS_PROBABILITY
    named: str | None  # a homophone name: introduced with its title, then said bare in every sentence


class SentenceComposer:
    """Fills templates with entities and fillers, never producing the same sentence twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def story(self, pools: Pools, previous: Story | None) -> Story:
        """Draw a new story; never about the group of the previous one, whose mentions its history holds."""
        focus = {etype: self.rng.choice(pool) for etype, pool in pools.entities.items()}
        rivals = GROUP_OF[previous.named] if previous and previous.named else ()
        candidates = [name for name in pools.homophones if name not in rivals]
        named = self.rng.choice(candidates) if candidates and self.rng.random() < NAMED_STORY_PROBABILITY else None
        return Story(focus, named)

    def compose(self, pools: Pools, story: Story, position: int) -> tuple[tuple[str, ...], str]:
        """Return (words, marked text) of a new sentence of MIN_CHARS..MAX_CHARS characters."""
        if story.named is None:
            templates = TEMPLATES
        else:
            templates = INTRO_TEMPLATES if position == 0 else MENTION_TEMPLATES
        for _ in range(MAX_TRIES):
            words, marked = self._fill(self.rng.choice(templates), pools, story)
            plain = "".join(words)
            if MIN_CHARS <= len(plain) <= MAX_CHARS and plain not in self.seen:
                self.seen.add(plain)
                return words, marked
        raise RuntimeError(
            f"no new sentence found in {MAX_TRIES} tries after {len(self.seen)} sentences: "
            "the templates are exhausted, ask for fewer utterances"
        )

    def _fill(self, template: str, pools: Pools, story: Story) -> tuple[tuple[str, ...], str]:
        tokens = template.split()
        person_slots = [index for index, token in enumerate(tokens) if token == "{PER}"]
        named_slot = self.rng.choice(person_slots) if story.named and person_slots else None
        words: list[str] = []
        marked: list[str] = []
        used: set[str] = set()
        for index, token in enumerate(tokens):
            slot = token[1:-1] if token.startswith("{") else None
            if slot in BRACKETS:
                entity = story.named if index == named_slot else self._entity(
                    pools.entities[slot], story.focus[slot], used)
                used.add(entity)
                words.append(entity)
                opening, closing = BRACKETS[slot]
                marked.append(f"{opening}{entity}{closing}")
            else:
                word = self._word(slot, token, story)
                words.append(word)
                marked.append(word)
        return tuple(words), "".join(marked)

    def _word(self, slot: str | None, token: str, story: Story) -> str:
        """A template's plain word: itself, a random filler, or the title of the story's name."""
        if slot is None:
            return token
        if slot == "TITLE":
            return INTRODUCTIONS[story.named]
        return self.rng.choice(FILLERS[slot])

    def _entity(self, pool: Sequence[str], focus: str, used: set[str]) -> str:
        if focus not in used and self.rng.random() < FOCUS_PROBABILITY:
            return focus
        return self.rng.choice([e for e in pool if e not in used])


def make_speakers(rng: random.Random, counts: dict[str, int]) -> dict[str, list[Speaker]]:
    """Give every split its own speakers, each with a distinct (variant, speed, pitch) voice."""
    voices = list(product(VOICE_VARIANTS, SPEEDS, PITCHES))
    if sum(counts.values()) > len(voices):
        raise ValueError(f"at most {len(voices)} distinct voices exist, {sum(counts.values())} speakers asked for")
    chosen = iter(rng.sample(voices, sum(counts.values())))
    speakers: dict[str, list[Speaker]] = {}
    for split in SPLITS:
        first, last = SPEAKER_RANGES[split]
        if not 1 <= counts[split] <= last - first + 1:
            raise ValueError(f"{split}: between 1 and {last - first + 1} speakers allowed, got {counts[split]}")
        speakers[split] = [
            Speaker(f"S{first + i:04d}", split, *next(chosen)) for i in range(counts[split])
        ]
    return speakers


def compose_corpus(num_utts: dict[str, int], num_speakers: dict[str, int], seed: int) -> list[Utterance]:
    """All utterances of all splits, in id order within each split; train is composed first."""
    rng = random.Random(seed)
    speakers = make_speakers(rng, num_speakers)
    composer = SentenceComposer(rng)
    full = Pools({"PER": UNAMBIGUOUS_PERSONS, "LOC": LOCATIONS, "ORG": ORGANIZATIONS}, tuple(GROUP_OF))
    utterances = read_by_speakers(composer, full, speakers["train"], num_utts["train"])
    pools = eval_pools(utterances, full)
    for split in ("dev", "test"):
        utterances += read_by_speakers(composer, pools, speakers[split], num_utts[split])
    return utterances


def eval_pools(train: list[Utterance], full: Pools) -> Pools:
    """Names spoken in train: per type (the full list where train has too few of a type), and
    the homophone spellings train introduced (never more: an unseen spelling cannot be learned)."""
    spoken = {entity.surface for utt in train for entity in parse_markup(utt.marked).entities}
    entities = {}
    for etype, names in full.entities.items():
        seen = [name for name in names if name in spoken]
        entities[etype] = seen if len(seen) >= MIN_EVAL_POOL else names
    return Pools(entities, [name for name in full.homophones if name in spoken])


def read_by_speakers(composer: SentenceComposer, pools: Pools, speakers: list[Speaker],
                     count: int) -> list[Utterance]:
    """Split `count` sentences over the speakers; each reads consecutive stories."""
    utterances = []
    for index, speaker in enumerate(speakers):
        share = count // len(speakers) + (index < count % len(speakers))
        story: Story | None = None
        for number in range(1, share + 1):
            position = (number - 1) % STORY_LENGTH
            if position == 0:
                story = composer.story(pools, story)
            words, marked = composer.compose(pools, story, position)
            uttid = f"{UTT_PREFIX}{speaker.spk_id}W{number:04d}"
            utterances.append(Utterance(uttid, speaker, words, marked))
    return utterances


def wav_path(out: Path, utt: Utterance) -> Path:
    return out / "data_aishell" / "wav" / utt.speaker.split / utt.speaker.spk_id / f"{utt.uttid}.wav"


SAMPLE_RATE = 16000
TAIL_SECONDS = 0.1  # kept after the last sample above TAIL_THRESHOLD: the decay of the last sound, then silence
TAIL_THRESHOLD = 328  # -40 dBFS in 16-bit samples


def trim_tail(samples: np.ndarray) -> np.ndarray:
    """``samples`` up to ``TAIL_SECONDS`` after the last one louder than ``TAIL_THRESHOLD``."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > TAIL_THRESHOLD)
    end = (loud[-1] + 1 if loud.size else 0) + round(TAIL_SECONDS * SAMPLE_RATE)
    return samples[:end]


def synthesize(utt: Utterance, path: Path) -> None:
    """Read the sentence with espeak-ng, resample to 16 kHz mono 16-bit without dither, cut the trailing silence."""
    spk = utt.speaker
    espeak = subprocess.run(
        ["espeak-ng", "-v", spk.voice, "-s", str(spk.speed), "-p", str(spk.pitch), "--stdout", utt.plain],
        capture_output=True, check=False,
    )
    if espeak.returncode != 0 or not espeak.stdout:
        raise RuntimeError(f"{utt.uttid}: espeak-ng failed: {espeak.stderr.decode(errors='replace').strip()}")
    sox = subprocess.run(
        ["sox", "-D", "-V1", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", "-t", "wav", "-"],
        input=espeak.stdout, capture_output=True, check=False,
    )
    if sox.returncode != 0:
        raise RuntimeError(f"{utt.uttid}: sox failed: {sox.stderr.decode(errors='replace').strip()}")
    samples, rate = sf.read(io.BytesIO(sox.stdout), dtype="int16")
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise RuntimeError(f"{utt.uttid}: sox wrote {rate} Hz audio of shape {samples.shape}, not 16 kHz mono")
    sf.write(path, trim_tail(samples), SAMPLE_RATE, subtype="PCM_16")


def synthesize_all(out: Path, utterances: list[Utterance], nj: int) -> None:
    """Synthesise in `nj` parallel espeak-ng/sox pipelines (threads only wait on those processes)."""
    paths = [wav_path(out, utt) for utt in utterances]
    for directory in sorted({path.parent for path in paths}):
        directory.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=nj) as pool:
        for _ in pool.map(synthesize, utterances, paths):
            pass


def write_transcripts(out: Path, utterances: list[Utterance]) -> None:
    """AISHELL-1's one space-separated transcript for all splits, AISHELL-NER's one file per split."""
    transcript = out / "data_aishell" / "transcript" / AISHELL_TRANSCRIPT
    transcript.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(utterances, key=lambda utt: utt.uttid)
    transcript.write_text("".join(f"{u.uttid} {' '.join(u.words)}\n" for u in ordered), encoding="utf-8")
    ner_dir = out / "aishell_ner"
    ner_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [f"{u.uttid} {u.marked}\n" for u in ordered if u.speaker.split == split]
        (ner_dir / NER_TRANSCRIPT.format(split=split)).write_text("".join(lines), encoding="utf-8")
    speakers = sorted({u.speaker for u in utterances}, key=lambda spk: spk.spk_id)
    (out / "speakers.txt").write_text(
        "".join(f"{s.spk_id} {s.split} {s.voice} {s.speed} {s.pitch}\n" for s in speakers), encoding="utf-8"
    )


def settings_of(args: argparse.Namespace) -> dict[str, object]:
    """What determines the output: the arguments (not --out/--nj) and this code's version."""
    code = hashlib.sha256()
    for source in (Path(__file__), Path(__file__).with_name("lexicon.py")):
        code.update(source.read_bytes())
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "nj")}
    settings["code_sha256"] = code.hexdigest()
    return settings


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="corpus root (gets data_aishell/ and aishell_ner/)")
    parser.add_argument("--num_train", type=int, default=3000, help="train utterances")
    parser.add_argument("--num_dev", type=int, default=300, help="dev utterances")
    parser.add_argument("--num_test", type=int, default=300, help="test utterances")
    parser.add_argument("--num_train_spk", type=int, default=12, help="train speakers")
    parser.add_argument("--num_dev_spk", type=int, default=3, help="dev speakers")
    parser.add_argument("--num_test_spk", type=int, default=3, help="test speakers")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis jobs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    if args.nj < 1:
        raise SystemExit(f"--nj must be at least 1, got {args.nj}")
    counts = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    if min(counts.values()) < 1:
        raise SystemExit(f"every split needs at least one utterance, got {counts}")
    out: Path = args.out
    marker = out / ".done"
    settings = settings_of(args)
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == settings:
        print(f"{out}: corpus already made with these settings, skipping", file=sys.stderr)
        return
    marker.unlink(missing_ok=True)
    for stale in ("data_aishell", "aishell_ner"):
        shutil.rmtree(out / stale, ignore_errors=True)

    start = time.monotonic()
    speakers = {"train": args.num_train_spk, "dev": args.num_dev_spk, "test": args.num_test_spk}
    try:
        utterances = compose_corpus(counts, speakers, args.seed)
    except (RuntimeError, ValueError) as error:
        raise SystemExit(f"make_corpus: {error}") from error
    write_transcripts(out, utterances)
    synthesize_all(out, utterances, args.nj)
    marker.write_text(json.dumps(settings, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{out}: {len(utterances)} utterances ({counts}) synthesised in "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
