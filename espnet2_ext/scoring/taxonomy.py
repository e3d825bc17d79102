"""The ASR-NER error taxonomy of the paper (Sec. 2.4, Table 4), per gold entity.

A gold entity's *region* runs from the first to the last hypothesis character aligned (as a
match or substitution, see :mod:`.alignment`) to one of its characters; it is empty when none
is. With hypothesis entities as character spans of the hypothesis plain text:

* ``correct_span``: a hypothesis entity of the same type spans exactly the region;
* ``correct_entity``: correct_span and the same surface;
* ``error_span``: not correct_span (reported as 100 − correct_span);
* ``replacement``: not correct_span, and a hypothesis entity of another type spans the region;
* ``omission``: no hypothesis entity overlaps the region, or the region is empty.

Replacement and omission are disjoint subsets of error_span; the rest of error_span (some
hypothesis entity overlaps the region with wrong boundaries) is counted as
``other_error_span``. Percentages are of gold entities and None when there are none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from espnet2_ext.scoring.alignment import Alignment
from espnet2_ext.text.ner_markup import Entity

TAXONOMY_KEYS = ("correct_span", "correct_entity", "error_span", "replacement", "omission")


@dataclass(frozen=True)
class GoldVerdict:
    """The taxonomy flags of one gold entity and the hypothesis region it maps to."""

    entity: Entity
    region: tuple[int, int] | None
    correct_span: bool
    correct_entity: bool
    replacement: bool
    omission: bool

    @property
    def category(self) -> str:
        """The single most specific category, for error analysis."""
        if self.correct_entity:
            return "correct_entity"
        if self.correct_span:
            return "correct_span_wrong_text"
        if self.replacement:
            return "replacement"
        if self.omission:
            return "omission"
        return "other_error_span"


def classify_entities(
    gold: Sequence[Entity], hyp: Sequence[Entity], alignment: Alignment
) -> list[GoldVerdict]:
    """Classify every gold entity of one utterance against the hypothesis entities."""
    ref_to_hyp = alignment.ref_to_hyp()
    verdicts = []
    for entity in gold:
        aligned = [h for h in ref_to_hyp[entity.start : entity.end] if h is not None]
        region = (aligned[0], aligned[-1] + 1) if aligned else None
        spanning = [h for h in hyp if region == (h.start, h.end)]
        same_type = [h for h in spanning if h.type == entity.type]
        overlapping = region is not None and any(
            h.start < region[1] and region[0] < h.end for h in hyp
        )
        verdicts.append(
            GoldVerdict(
                entity=entity,
                region=region,
                correct_span=bool(same_type),
                correct_entity=any(h.surface == entity.surface for h in same_type),
                replacement=not same_type and bool(spanning),
                omission=not overlapping,
            )
        )
    return verdicts


@dataclass
class TaxonomyCounts:
    """Numbers of gold entities in each taxonomy category, accumulated over utterances."""

    gold: int = 0
    correct_span: int = 0
    correct_entity: int = 0
    replacement: int = 0
    omission: int = 0

    def add(self, verdicts: Sequence[GoldVerdict]) -> None:
        self.gold += len(verdicts)
        self.correct_span += sum(v.correct_span for v in verdicts)
        self.correct_entity += sum(v.correct_entity for v in verdicts)
        self.replacement += sum(v.replacement for v in verdicts)
        self.omission += sum(v.omission for v in verdicts)

    @property
    def other_error_span(self) -> int:
        return self.gold - self.correct_span - self.replacement - self.omission

    def percentages(self) -> dict[str, float | None]:
        """The five Table-4 percentages (None for every key when there is no gold entity)."""
        if not self.gold:
            return dict.fromkeys(TAXONOMY_KEYS)
        scale = 100.0 / self.gold
        return {
            "correct_span": self.correct_span * scale,
            "correct_entity": self.correct_entity * scale,
            "error_span": 100.0 - self.correct_span * scale,
            "replacement": self.replacement * scale,
            "omission": self.omission * scale,
        }
