"""Randomly corrupted hypotheses made from real references, for benchmarking and testing the scorer.

Corruptions mimic ASR + NER errors: character substitutions, deletions and insertions;
entity type changes, dropped entities and shifted boundaries; now and then a stray bracket
(invalid markup); whole utterances missing and hypothesis lines without reference.
Everything is driven by the given ``random.Random``, so a fixed seed gives fixed output.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from espnet2_ext.text.ner_markup import BRACKETS, ENTITY_TYPES, MARKUP_CHARS, parse_markup


@dataclass(frozen=True)
class CorruptionRates:
    """Probabilities per character, per entity, per utterance."""

    char: float = 0.1
    entity: float = 0.2
    invalid_markup: float = 0.02
    missing: float = 0.01
    extra: float = 0.01


def _corrupt_chars(
    plain: str, labels: list[int | None], rng: random.Random, alphabet: Sequence[str], rate: float
) -> list[tuple[str, int | None]]:
    """Substitute, delete or double characters; each cell keeps its entity label."""
    cells: list[tuple[str, int | None]] = []
    for char, label in zip(plain, labels):
        draw = rng.random()
        if draw < rate / 3:
            cells.append((rng.choice(alphabet), label))
        elif draw < 2 * rate / 3:
            continue
        elif draw < rate:
            cells += [(char, label), (rng.choice(alphabet), label)]
        else:
            cells.append((char, label))
    return cells


def _shift_boundary(cells: list[tuple[str, int | None]], entity: int, rng: random.Random) -> None:
    """Shrink the entity by its first or last character, or grow it by a free neighbour."""
    positions = [i for i, (_, label) in enumerate(cells) if label == entity]
    if not positions:
        return
    if rng.random() < 0.5 and len(positions) > 1:
        victim = positions[0] if rng.random() < 0.5 else positions[-1]
        cells[victim] = (cells[victim][0], None)
        return
    for neighbour in (positions[-1] + 1, positions[0] - 1):
        if 0 <= neighbour < len(cells) and cells[neighbour][1] is None:
            cells[neighbour] = (cells[neighbour][0], entity)
            return


def _render(cells: list[tuple[str, int | None]], types: list[str | None]) -> str:
    """Write labelled cells as markup; entities whose type is None lose their brackets."""
    pieces: list[str] = []
    current: int | None = None
    for char, label in cells:
        label = label if label is not None and types[label] is not None else None
        if label != current:
            if current is not None:
                pieces.append(BRACKETS[types[current]][1])
            if label is not None:
                pieces.append(BRACKETS[types[label]][0])
            current = label
        pieces.append(char)
    if current is not None:
        pieces.append(BRACKETS[types[current]][1])
    return "".join(pieces)


def corrupt_markup(
    text: str,
    rng: random.Random,
    alphabet: Sequence[str],
    rates: CorruptionRates = CorruptionRates(),
) -> str:
    """One corrupted hypothesis for a (valid) marked reference text."""
    marked = parse_markup(text)
    labels: list[int | None] = [None] * len(marked.plain)
    for index, entity in enumerate(marked.entities):
        labels[entity.start : entity.end] = [index] * (entity.end - entity.start)
    cells = _corrupt_chars(marked.plain, labels, rng, alphabet, rates.char)
    types: list[str | None] = [entity.type for entity in marked.entities]
    for index, etype in enumerate(types):
        draw = rng.random()
        if draw < rates.entity / 3:
            types[index] = rng.choice([t for t in ENTITY_TYPES if t != etype])
        elif draw < 2 * rates.entity / 3:
            types[index] = None
        elif draw < rates.entity:
            _shift_boundary(cells, index, rng)
    hypothesis = _render(cells, types)
    if rng.random() < rates.invalid_markup:
        position = rng.randint(0, len(hypothesis))
        stray = rng.choice(sorted(MARKUP_CHARS))
        hypothesis = hypothesis[:position] + stray + hypothesis[position:]
    return hypothesis


def corrupt_corpus(
    refs: Mapping[str, str], seed: int, rates: CorruptionRates = CorruptionRates()
) -> dict[str, str]:
    """Corrupted hypotheses for ``{utt_id: marked text}``, a few missing, a few extra."""
    rng = random.Random(seed)
    alphabet = sorted({char for text in refs.values() for char in parse_markup(text).plain})
    hyps: dict[str, str] = {}
    for utt_id, text in refs.items():
        if rng.random() >= rates.missing:
            hyps[utt_id] = corrupt_markup(text, rng, alphabet, rates)
        if rng.random() < rates.extra:
            hyps[f"extra-{len(hyps)}"] = corrupt_markup(text, rng, alphabet, rates)
    return hyps
