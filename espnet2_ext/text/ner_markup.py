"""AISHELL-NER entity markup and the text normalisation every transcript goes through.

AISHELL-NER writes named entities inline: ``[..]`` person (PER), ``(..)`` location (LOC),
``<..>`` organisation (ORG). Entities are flat (never nested) and may be written back to
back, e.g. ``(北)(上)(广)(深)``. :func:`parse_markup` turns marked text into plain text plus
character spans; :func:`render_markup` is its exact inverse.

Normalisation (:func:`normalize_text`), decided once here for references and hypotheses alike:

* The full-width forms of the six markup characters, ``（）［］＜＞`` (U+FF08/09, U+FF3B/3D,
  U+FF1C/1E), become their ASCII originals, as NFKC would map them. Other CJK brackets,
  ``【】〈〉《》「」`` etc., are punctuation with meanings of their own (《》 marks titles) and are
  left untouched: mapping them would invent entities.
* Full-width digits ``０-９`` and Latin letters ``Ａ-Ｚ ａ-ｚ`` become ASCII; no other character
  is changed (CJK punctuation such as ``，。？`` stays as it is).
* ASCII Latin letters are upper-cased: case is not audible, AISHELL-NER writes ``ｔ恤``/``五ａ级``
  in lower case while a model may well write ``T恤``, and the CER should not count that.
* All whitespace (``str.split`` semantics, including U+3000) is removed, so AISHELL-1's
  space-separated transcripts and AISHELL-NER's unspaced ones have identical plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG")

# The one bracket table: entity type -> (opening, closing) ASCII character.
BRACKETS: dict[str, tuple[str, str]] = {"PER": ("[", "]"), "LOC": ("(", ")"), "ORG": ("<", ">")}

_OPEN_TYPE = {pair[0]: etype for etype, pair in BRACKETS.items()}
_CLOSE_TYPE = {pair[1]: etype for etype, pair in BRACKETS.items()}
MARKUP_CHARS = frozenset(_OPEN_TYPE) | frozenset(_CLOSE_TYPE)

# Full-width forms of the markup characters (U+FF01..U+FF5E are U+0021..U+007E shifted by 0xFEE0).
_FULLWIDTH_OFFSET = 0xFEE0
_NORMALIZE_TABLE: dict[int, str] = {ord(ch) + _FULLWIDTH_OFFSET: ch for ch in MARKUP_CHARS}
_NORMALIZE_TABLE.update({0xFF10 + i: chr(ord("0") + i) for i in range(10)})
_NORMALIZE_TABLE.update({0xFF21 + i: chr(ord("A") + i) for i in range(26)})
_NORMALIZE_TABLE.update({0xFF41 + i: chr(ord("A") + i) for i in range(26)})
_NORMALIZE_TABLE.update({ord("a") + i: chr(ord("A") + i) for i in range(26)})
_STRIP_TABLE: dict[int, None] = {ord(ch): None for ch in MARKUP_CHARS}


class MarkupError(ValueError):
    """Invalid entity markup; the message names file, line, utterance and column when known.

    ``column`` is 1-based and counts characters of the text handed to :func:`parse_markup`
    (for files: the normalised text after the utterance id).
    """

    def __init__(
        self,
        reason: str,
        column: int,
        *,
        path: str | None = None,
        line: int | None = None,
        utt_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.column = column
        self.path = path
        self.line = line
        self.utt_id = utt_id
        where = []
        if path is not None:
            where.append(f"{path}:{line}" if line is not None else path)
        elif line is not None:
            where.append(f"line {line}")
        if utt_id is not None:
            where.append(f"utterance {utt_id}")
        where.append(f"column {column}")
        super().__init__(f"{': '.join(where)}: {reason}")


@dataclass(frozen=True)
class Entity:
    """A named entity: ``plain[start:end] == surface`` (character offsets, end exclusive)."""

    type: str
    start: int
    end: int
    surface: str

    def __post_init__(self) -> None:
        if self.type not in ENTITY_TYPES:
            raise ValueError(f"unknown entity type {self.type!r}; expected one of {ENTITY_TYPES}")
        if not 0 <= self.start < self.end or len(self.surface) != self.end - self.start:
            raise ValueError(f"inconsistent entity span: {self}")


@dataclass(frozen=True)
class MarkedText:
    """Plain text plus its entities, in order of position."""

    plain: str
    entities: list[Entity]


def normalize_text(text: str) -> str:
    """Apply the normalisation described in the module docstring (markup is kept)."""
    return "".join(text.translate(_NORMALIZE_TABLE).split())


def strip_markup(text: str) -> str:
    """Remove every markup character without validating (for hypotheses with broken markup)."""
    return text.translate(_STRIP_TABLE)


def parse_markup(
    text: str, *, path: str | None = None, line: int | None = None, utt_id: str | None = None
) -> MarkedText:
    """Split marked text into plain text and entity spans.

    Raises :class:`MarkupError` (with the given location) on a nested, unclosed, empty or
    mismatched entity or on a stray closing bracket.
    """

    def error(reason: str, index: int) -> MarkupError:
        return MarkupError(reason, index + 1, path=path, line=line, utt_id=utt_id)

    plain: list[str] = []
    entities: list[Entity] = []
    open_type: str | None = None
    open_index = open_start = 0
    for index, char in enumerate(text):
        if char in _OPEN_TYPE:
            if open_type is not None:
                raise error(
                    f"nested entity: {char!r} inside the {open_type} entity opened at column "
                    f"{open_index + 1}",
                    index,
                )
            open_type, open_index, open_start = _OPEN_TYPE[char], index, len(plain)
        elif char in _CLOSE_TYPE:
            if open_type is None:
                raise error(f"stray closing bracket {char!r}", index)
            if _CLOSE_TYPE[char] != open_type:
                raise error(
                    f"closing bracket {char!r} does not match {BRACKETS[open_type][0]!r} "
                    f"opened at column {open_index + 1}",
                    index,
                )
            if open_start == len(plain):
                raise error(f"empty {open_type} entity", index)
            surface = "".join(plain[open_start:])
            entities.append(Entity(open_type, open_start, len(plain), surface))
            open_type = None
        else:
            plain.append(char)
    if open_type is not None:
        raise error(f"unclosed {open_type} entity {BRACKETS[open_type][0]!r}", open_index)
    return MarkedText("".join(plain), entities)


def render_markup(plain: str, entities: Sequence[Entity]) -> str:
    """Write entities back into plain text: the exact inverse of :func:`parse_markup`.

    Raises ValueError if the plain text contains markup characters or the entities are
    unordered, overlapping, out of range or disagree with the text.
    """
    stray = sorted(MARKUP_CHARS.intersection(plain))
    if stray:
        raise ValueError(f"plain text contains markup characters {stray}: {plain!r}")
    pieces: list[str] = []
    position = 0
    for entity in entities:
        if entity.start < position or entity.end > len(plain):
            raise ValueError(f"entity {entity} overlaps another or lies outside {plain!r}")
        if plain[entity.start : entity.end] != entity.surface:
            raise ValueError(f"entity {entity} does not match the text {plain!r}")
        opening, closing = BRACKETS[entity.type]
        pieces += [plain[position : entity.start], opening, entity.surface, closing]
        position = entity.end
    pieces.append(plain[position:])
    return "".join(pieces)
