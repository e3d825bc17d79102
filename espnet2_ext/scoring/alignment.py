"""Character-level Levenshtein alignment of a reference and a hypothesis.

The backtrace runs from the end of both strings and, where several moves give the same
minimal cost, prefers match/substitution, then deletion, then insertion. The CER does not
depend on that choice; the NER taxonomy (which hypothesis characters a gold entity maps to)
does, so the rule is fixed here and tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

MATCH, SUBSTITUTION, DELETION, INSERTION = "C", "S", "D", "I"


class EditOp(NamedTuple):
    """One alignment step; ``ref_index``/``hyp_index`` are None for insertions/deletions."""

    op: str
    ref_index: int | None
    hyp_index: int | None


@dataclass(frozen=True)
class Alignment:
    """A minimal-cost alignment of ``ref`` and ``hyp`` as a sequence of edit operations."""

    ref: str
    hyp: str
    ops: tuple[EditOp, ...]

    def count(self, op: str) -> int:
        """Number of operations of one kind (MATCH, SUBSTITUTION, DELETION, INSERTION)."""
        return sum(1 for step in self.ops if step.op == op)

    def ref_to_hyp(self) -> list[int | None]:
        """For each reference character, the hypothesis character it is aligned to (or None)."""
        mapping: list[int | None] = [None] * len(self.ref)
        for step in self.ops:
            if step.ref_index is not None:
                mapping[step.ref_index] = step.hyp_index
        return mapping


def align(ref: str, hyp: str) -> Alignment:
    """Align two strings with an O(len(ref)·len(hyp)) dynamic programme."""
    cols = len(hyp)
    table = [list(range(cols + 1))]
    previous = table[0]
    for i, ref_char in enumerate(ref, start=1):
        current = [i] * (cols + 1)
        left = i
        for j, hyp_char in enumerate(hyp, start=1):
            cost = previous[j - 1] + (ref_char != hyp_char)
            if previous[j] + 1 < cost:
                cost = previous[j] + 1
            if left + 1 < cost:
                cost = left + 1
            current[j] = left = cost
        table.append(current)
        previous = current

    ops: list[EditOp] = []
    i, j = len(ref), cols
    while i or j:
        if i and j and table[i][j] == table[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            i, j = i - 1, j - 1
            ops.append(EditOp(MATCH if ref[i] == hyp[j] else SUBSTITUTION, i, j))
        elif i and table[i][j] == table[i - 1][j] + 1:
            i -= 1
            ops.append(EditOp(DELETION, i, None))
        else:
            j -= 1
            ops.append(EditOp(INSERTION, None, j))
    ops.reverse()
    return Alignment(ref, hyp, tuple(ops))
