"""Entity precision, recall and F1 per type and over all types (micro-averaged).

Per utterance, gold and hypothesis entities are matched as multisets of (type, surface):
positions are ignored, as in the AISHELL-NER evaluation. Precision = matched / hypothesis
entities, recall = matched / gold entities, F1 = 2PR / (P + R); each is defined as 0 when
its denominator is 0 (so a type with neither gold nor hypothesis entities scores F1 = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from espnet2_ext.text.ner_markup import ENTITY_TYPES, Entity

ALL = "ALL"


def match_entities(gold: Sequence[Entity], hyp: Sequence[Entity]) -> list[tuple[Entity, Entity]]:
    """Pair each gold entity with an unused hypothesis entity of equal type and surface."""
    unused: dict[tuple[str, str], list[Entity]] = {}
    for entity in reversed(hyp):
        unused.setdefault((entity.type, entity.surface), []).append(entity)
    pairs = []
    for entity in gold:
        candidates = unused.get((entity.type, entity.surface))
        if candidates:
            pairs.append((entity, candidates.pop()))
    return pairs


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass
class EntityCounts:
    """Gold, hypothesis and matched entity counts for one type (or all)."""

    gold: int = 0
    hyp: int = 0
    matched: int = 0

    @property
    def precision(self) -> float:
        return _ratio(self.matched, self.hyp)

    @property
    def recall(self) -> float:
        return _ratio(self.matched, self.gold)

    @property
    def f1(self) -> float:
        precision, recall = self.precision, self.recall
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@dataclass
class NerCounts:
    """Entity counts per type, accumulated over utterances."""

    by_type: dict[str, EntityCounts] = field(
        default_factory=lambda: {etype: EntityCounts() for etype in ENTITY_TYPES}
    )

    def add(
        self, gold: Sequence[Entity], hyp: Sequence[Entity], pairs: Sequence[tuple[Entity, Entity]]
    ) -> None:
        """Add one utterance: its gold and hypothesis entities and their matched pairs."""
        for entity in gold:
            self.by_type[entity.type].gold += 1
        for entity in hyp:
            self.by_type[entity.type].hyp += 1
        for entity, _ in pairs:
            self.by_type[entity.type].matched += 1

    def total(self) -> EntityCounts:
        """Counts summed over all types (the micro average's numerators and denominators)."""
        counts = self.by_type.values()
        return EntityCounts(
            gold=sum(c.gold for c in counts),
            hyp=sum(c.hyp for c in counts),
            matched=sum(c.matched for c in counts),
        )

    def with_total(self) -> dict[str, EntityCounts]:
        """Per-type counts plus ``ALL``."""
        return {**self.by_type, ALL: self.total()}
