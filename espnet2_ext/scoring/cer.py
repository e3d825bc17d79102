"""Character error rate, accumulated over utterances on markup-free text.

CER (%) = 100 · (substitutions + deletions + insertions) / reference characters. It is
undefined (None) when the reference has no characters at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from espnet2_ext.scoring.alignment import DELETION, INSERTION, SUBSTITUTION, Alignment


@dataclass
class ErrorCounts:
    """Running totals of reference characters and edit operations."""

    ref_chars: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    def add(self, alignment: Alignment) -> None:
        """Add one utterance's alignment."""
        self.ref_chars += len(alignment.ref)
        self.substitutions += alignment.count(SUBSTITUTION)
        self.deletions += alignment.count(DELETION)
        self.insertions += alignment.count(INSERTION)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def cer(self) -> float | None:
        """CER in percent, or None without reference characters."""
        return 100.0 * self.errors / self.ref_chars if self.ref_chars else None
