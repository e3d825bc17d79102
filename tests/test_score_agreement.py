"""The scorer agrees with an independent implementation of the same definitions.

The reference implementation below shares no code with ``espnet2_ext.scoring`` or the
markup parser: a regex markup reader, NFKC-based normalisation, a numpy Levenshtein table over
suffixes walked forwards, Counter-based F1 and set-based taxonomy. Hypotheses are randomly corrupted
versions of the real AISHELL-NER dev annotations (fixed seeds).

The tie rule (prefer match/substitution, then deletion, then insertion, backtracing from the
end) is part of the taxonomy's definition: the reference gets it by walking the reversed
strings forwards. Breaking ties from the start instead moves correct_span by about a point
at 5 % character errors, which is why the rule is fixed and tested.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np
import pytest
from helpers_data import AISHELL_NER_DEV

from espnet2_ext.scoring import score_texts
from espnet2_ext.scoring.synthetic import CorruptionRates, corrupt_corpus
from espnet2_ext.text.kaldi_text import read_kaldi_text

# --- independent reference implementation -------------------------------------------------

TYPE_OF = {"[": "PER", "(": "LOC", "<": "ORG"}
ENTITY_RE = re.compile(r"\[([^\[\]()<>]+)\]|\(([^\[\]()<>]+)\)|<([^\[\]()<>]+)>")
MARKUP_RE = re.compile(r"[\[\]()<>]")
# full-width ( ) < > [ ], digits, upper- and lower-case Latin letters
FULLWIDTH_RE = re.compile(r"[（）＜＞［］０-９Ａ-Ｚａ-ｚ]")
UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ref_normalize(text: str) -> str:
    text = FULLWIDTH_RE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return re.sub(r"\s+", "", text).translate(UPPER)


def ref_parse(text: str) -> tuple[str, list[tuple[str, int, int, str]]] | None:
    """(plain, [(type, start, end, surface)]) or None for invalid markup."""
    if MARKUP_RE.search(ENTITY_RE.sub("", text)):
        return None
    entities, plain_len, consumed = [], 0, 0
    for match in ENTITY_RE.finditer(text):
        plain_len += match.start() - consumed
        surface = next(group for group in match.groups() if group)
        entities.append((TYPE_OF[match.group()[0]], plain_len, plain_len + len(surface), surface))
        plain_len += len(surface)
        consumed = match.end()
    return MARKUP_RE.sub("", text), entities


def suffix_distances(ref: str, hyp: str) -> np.ndarray:
    """table[i, j] = Levenshtein distance of ref[i:] and hyp[j:] (numpy, row by row)."""
    n, m = len(ref), len(hyp)
    table = np.zeros((n + 1, m + 1), dtype=np.int64)
    table[n] = np.arange(m, -1, -1)
    hyp_codes = np.array([ord(c) for c in hyp], dtype=np.int64)
    offsets = np.arange(m, -1, -1)  # insertion costs accumulate towards the start of hyp
    for i in range(n - 1, -1, -1):
        below = table[i + 1]
        base = np.empty(m + 1, dtype=np.int64)
        base[m] = below[m] + 1
        base[:m] = np.minimum(below[:m] + 1, below[1:] + (hyp_codes != ord(ref[i])))
        # row[j] = min over k >= j of base[k] + (k - j)
        table[i] = np.minimum.accumulate((base - offsets)[::-1])[::-1] + offsets
    return table


def forward_alignment(ref: str, hyp: str) -> tuple[int, dict[int, int]]:
    """(distance, {ref index: hyp index} for matches/substitutions), walking from the start and
    preferring match/substitution, then deletion, then insertion wherever costs tie."""
    table = suffix_distances(ref, hyp)
    pairs, i, j = {}, 0, 0
    while i < len(ref) or j < len(hyp):
        both = i < len(ref) and j < len(hyp)
        if both and table[i, j] == table[i + 1, j + 1] + (ref[i] != hyp[j]):
            pairs[i] = j
            i, j = i + 1, j + 1
        elif i < len(ref) and table[i, j] == table[i + 1, j] + 1:
            i += 1
        else:
            j += 1
    return int(table[0, 0]), pairs


def ref_align(ref: str, hyp: str) -> tuple[int, dict[int, int]]:
    """The definition's tie rule applies from the end of the strings: walk the reversed strings."""
    distance, pairs = forward_alignment(ref[::-1], hyp[::-1])
    return distance, {len(ref) - 1 - i: len(hyp) - 1 - j for i, j in pairs.items()}


def reference_scores(refs: dict[str, str], hyps: dict[str, str]) -> dict:
    ref_chars = errors = 0
    gold_n, hyp_n, matched = Counter(), Counter(), Counter()
    tax = Counter()
    for utt_id, ref_text in refs.items():
        ref_plain, gold = ref_parse(ref_normalize(ref_text))
        hyp_text = ref_normalize(hyps.get(utt_id, ""))
        parsed = ref_parse(hyp_text)
        hyp_plain, guess = parsed if parsed is not None else (MARKUP_RE.sub("", hyp_text), [])
        distance, pairs = ref_align(ref_plain, hyp_plain)
        ref_chars += len(ref_plain)
        errors += distance
        gold_keys = Counter((t, s) for t, _, _, s in gold)
        hyp_keys = Counter((t, s) for t, _, _, s in guess)
        gold_n.update(t for t, _ in gold_keys.elements())
        hyp_n.update(t for t, _ in hyp_keys.elements())
        matched.update(t for t, _ in (gold_keys & hyp_keys).elements())
        spans = {(s, e, t) for t, s, e, _ in guess}
        for etype, start, end, surface in gold:
            aligned = sorted(pairs[k] for k in range(start, end) if k in pairs)
            tax["gold"] += 1
            if not aligned:
                tax["omission"] += 1
                continue
            lo, hi = aligned[0], aligned[-1] + 1
            if (lo, hi, etype) in spans:
                tax["correct_span"] += 1
                tax["correct_entity"] += hyp_plain[lo:hi] == surface
            elif {(lo, hi, t) for t in TYPE_OF.values()} & spans:
                tax["replacement"] += 1
            if not any(s < hi and lo < e for s, e, _ in spans):
                tax["omission"] += 1

    def prf(t: str | None) -> tuple[float, float, float]:
        g = sum(gold_n.values()) if t is None else gold_n[t]
        h = sum(hyp_n.values()) if t is None else hyp_n[t]
        m = sum(matched.values()) if t is None else matched[t]
        return (m / h if h else 0.0, m / g if g else 0.0, 2 * m / (g + h) if m else 0.0)

    types = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "ALL": None}
    keys = ("correct_span", "correct_entity", "replacement", "omission")
    pct = {k: 100.0 * tax[k] / tax["gold"] for k in keys}
    pct["error_span"] = 100.0 - pct["correct_span"]
    return {
        "cer": 100.0 * errors / ref_chars,
        "precision": {k: prf(t)[0] for k, t in types.items()},
        "recall": {k: prf(t)[1] for k, t in types.items()},
        "f1": {k: prf(t)[2] for k, t in types.items()},
        "taxonomy": pct,
    }


# --- the comparison -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_refs() -> dict[str, str]:
    """The real AISHELL-NER dev transcript (kept in tests/data)."""
    return read_kaldi_text(AISHELL_NER_DEV)


def test_independent_implementation_sanity() -> None:
    assert suffix_distances("kitten", "sitting")[0, 0] == 3
    assert ref_align("", "ab") == (2, {})
    assert ref_align("aa", "a") == (1, {1: 0}) and forward_alignment("aa", "a") == (1, {0: 0})
    assert ref_align("abcd", "xbd") == (2, {0: 0, 1: 1, 3: 2})
    assert ref_parse("[张三](北)(京)") == (
        "张三北京",
        [("PER", 0, 2, "张三"), ("LOC", 2, 3, "北"), ("LOC", 3, 4, "京")],
    )
    assert ref_parse("[张(三)]") is None and ref_parse("[]") is None
    assert ref_normalize("ｔ恤 （北京）") == "T恤(北京)"


RATES = [
    CorruptionRates(char=0.05, entity=0.1, invalid_markup=0.01, missing=0.01, extra=0.01),
    CorruptionRates(char=0.15, entity=0.3, invalid_markup=0.03, missing=0.02, extra=0.02),
    CorruptionRates(char=0.35, entity=0.6, invalid_markup=0.05, missing=0.05, extra=0.05),
]


@pytest.mark.parametrize("seed", range(6))
def test_scorer_agrees_with_independent_implementation(dev_refs: dict[str, str], seed: int) -> None:
    ids = list(dev_refs)[seed * 2000 : seed * 2000 + 400]
    refs = {utt_id: dev_refs[utt_id] for utt_id in ids}
    hyps = corrupt_corpus(refs, seed=seed, rates=RATES[seed % len(RATES)])
    ours = score_texts(refs, hyps).to_json()
    theirs = reference_scores(refs, hyps)

    counts = ours["counts"]
    assert counts["utterances"] == 400 and counts["ref_chars"] > 4000
    assert counts["extra_hyp"] + counts["missing_hyp"] + counts["invalid_hyp_markup"] > 0
    assert 0 < ours["cer"] < 100
    assert abs(ours["cer"] - theirs["cer"]) <= 0.01
    for metric in ("precision", "recall", "f1"):
        for key in ("PER", "LOC", "ORG", "ALL"):
            assert abs(ours[metric][key] - theirs[metric][key]) <= 0.001, (metric, key)
    for key, value in theirs["taxonomy"].items():
        assert abs(ours["taxonomy"][key] - value) <= 0.2, key
    assert ours["taxonomy"]["correct_entity"] < 100 and ours["taxonomy"]["omission"] > 0
