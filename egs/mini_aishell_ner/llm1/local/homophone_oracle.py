#!/usr/bin/env python3
"""How much the history can help on the synthetic corpus: which homophone names only it resolves.

A homophone name (lexicon.HOMOPHONE_GROUPS) said bare sounds exactly like the other spellings
of its group; only an earlier sentence of the same speaker that introduced it with its title
("经理 章玮") tells which is meant. For each history length this prints how many utterances of
a split hold such a bare name resolvable within that many previous utterances, and scores,
with the project's scorer, a system with perfect acoustics that writes every name it cannot
resolve as the spelling of its group most frequent in train: the bound on what the history
is worth. Usage::

    python local/homophone_oracle.py --corpus CORPUS --split test --out DIR   # DIR/h{0,1,2}/result.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from espnet2_ext.bin import score_ner
from espnet2_ext.text.ner_markup import parse_markup, render_markup
from lexicon import HOMOPHONE_GROUPS, INTRODUCTIONS

GROUP_OF = {name: group for group in HOMOPHONE_GROUPS for name in group}
NER_TRANSCRIPT = "aishell_ner/aishell_ner_transcript.{split}.txt"
HISTORIES = (0, 1, 2)  # the history lengths the mini recipe decodes with


@dataclass(frozen=True)
class Mention:
    """One homophone name said in one utterance, and where its speaker last fixed its spelling."""

    uttid: str
    name: str
    introduced: bool  # said with its title in this very utterance
    distance: int | None  # utterances back to this speaker's last introduction of it (None: none)
    rival: int | None  # utterances back to this speaker's last saying of another spelling of its group

    def resolved_with(self, history: int) -> bool:
        """Whether `history` previous utterances (or this one) fix the spelling."""
        if self.introduced:
            return True
        return (self.distance is not None and self.distance <= history
                and (self.rival is None or self.rival > self.distance))


def read_transcript(path: Path) -> list[tuple[str, str]]:
    """``(uttid, marked text)`` lines of an AISHELL-NER transcript, in id order."""
    lines = [line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted((uttid, marked) for uttid, marked in lines)


def find_mentions(lines: Sequence[tuple[str, str]]) -> list[Mention]:
    """Every homophone name in the lines (one split, id order; the speaker is the id's S0002 part)."""
    introduced_at: dict[tuple[str, str], int] = {}  # (speaker, name) -> the speaker's utterance number
    said_at: dict[tuple[str, str], int] = {}
    numbers: dict[str, int] = {}
    mentions = []
    for uttid, marked in lines:
        speaker = uttid[6:11]
        index = numbers[speaker] = numbers.get(speaker, -1) + 1
        parsed = parse_markup(marked, utt_id=uttid)
        names = [(entity.surface, parsed.plain[:entity.start].endswith(INTRODUCTIONS[entity.surface]))
                 for entity in parsed.entities if entity.type == "PER" and entity.surface in GROUP_OF]
        for name, introduced in names:
            last = introduced_at.get((speaker, name))
            rivals = [said_at[(speaker, other)] for other in GROUP_OF[name]
                      if other != name and (speaker, other) in said_at]
            mentions.append(Mention(uttid, name, introduced, None if last is None else index - last,
                                    index - max(rivals) if rivals else None))
        for name, introduced in names:
            said_at[(speaker, name)] = index
            if introduced:
                introduced_at[(speaker, name)] = index
    return mentions


def most_frequent_spellings(train: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Homophone name -> the spelling of its group said most often in train (ties: lexicon order)."""
    counts = Counter(entity.surface for _, marked in train for entity in parse_markup(marked).entities)
    return {name: max(group, key=lambda spelling: counts[spelling]) for name, group in GROUP_OF.items()}


def oracle_hypothesis(lines: Sequence[tuple[str, str]], mentions: Sequence[Mention],
                      guess: dict[str, str], history: int) -> list[tuple[str, str]]:
    """The reference, except that every name `history` does not resolve is written as its `guess`."""
    unresolved = {(m.uttid, m.name) for m in mentions if not m.resolved_with(history)}
    hypothesis = []
    for uttid, marked in lines:
        parsed = parse_markup(marked, utt_id=uttid)
        plain = list(parsed.plain)
        entities = []
        for entity in parsed.entities:
            if (uttid, entity.surface) in unresolved:
                # Spellings of a group have as many characters as syllables: offsets stay valid.
                plain[entity.start:entity.end] = guess[entity.surface]
                entity = replace(entity, surface=guess[entity.surface])
            entities.append(entity)
        hypothesis.append((uttid, render_markup("".join(plain), entities)))
    return hypothesis


def write_text(path: Path, lines: Sequence[tuple[str, str]]) -> None:
    path.write_text("".join(f"{uttid} {text}\n" for uttid, text in lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="make_corpus.py's --out directory")
    parser.add_argument("--split", default="test", choices=("dev", "test"))
    parser.add_argument("--out", type=Path, required=True, help="gets ref, h*/hyp and h*/result.json")
    args = parser.parse_args(argv)
    ref = args.corpus / NER_TRANSCRIPT.format(split=args.split)
    lines = read_transcript(ref)
    mentions = find_mentions(lines)
    guess = most_frequent_spellings(read_transcript(args.corpus / NER_TRANSCRIPT.format(split="train")))
    bare = {m.uttid for m in mentions if not m.introduced}
    print(f"{args.split}: {len(lines)} utterances, {len(bare)} ({100 * len(bare) / len(lines):.1f}%) "
          "with a homophone name said bare")
    for history in HISTORIES:
        unresolved = {m.uttid for m in mentions if not m.resolved_with(history)}
        resolved = bare - unresolved
        hyp_dir = args.out / f"h{history}"
        hyp_dir.mkdir(parents=True, exist_ok=True)
        write_text(hyp_dir / "hyp", oracle_hypothesis(lines, mentions, guess, history))
        score_ner.main(["--ref", str(ref), "--hyp", str(hyp_dir / "hyp"), "--out", str(hyp_dir),
                        "--name", f"oracle_h{history}"])
        result = json.loads((hyp_dir / "result.json").read_text(encoding="utf-8"))
        print(f"history {history}: bare names resolvable in {len(resolved)} utterances "
              f"({100 * len(resolved) / len(lines):.1f}%); perfect acoustics, most frequent spelling "
              f"otherwise: CER {result['cer']:.2f}%, F1 {result['f1']['ALL']:.3f}, PER F1 {result['f1']['PER']:.3f}")


if __name__ == "__main__":
    main()
