"""The Table-1 training formats as text: what the LLM must write after ``|asr|``, and how to read it back.

Speech is not text, so these functions only cover the target side; the speech layout
(``S_{i-k} … S_{i-1} γ S_i``) is built by the preprocessor and the model. Formats, with
``T`` the plain transcript (markup stripped) and ``T̂`` the transcript with entity markup:

* ``short_asr``: ``T_a T_b … T_i`` — the transcripts of randomly concatenated utterances, in order.
* ``long_asr``:  ``T_{i-k} … T_{i-1} |sep| T_i`` — history transcripts, ``|sep|``, the current one.
* ``cot_ner``:   ``T_{i-k} … T_{i-1} |sep| T_i |ner| T̂_i``.

With no history (k = 0) the long-form formats keep ``|sep|`` (``|sep| T_i``) and the speech has
no γ: γ marks a boundary between history and current speech, which does not exist then, while
``|sep|`` keeps the output schema of the model the same for every k. Training with k = 0 and
decoding with ``--history 0`` use the same functions, so they agree by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from espnet2_ext.text.chatglm3_tokenizer import ASR_TOKEN, NER_TOKEN, SEP_TOKEN
from espnet2_ext.text.ner_markup import strip_markup

TASKS: tuple[str, ...] = ("short_asr", "long_asr", "cot_ner")
MARKERS: tuple[str, ...] = (ASR_TOKEN, SEP_TOKEN, NER_TOKEN)


class ParsedOutput(NamedTuple):
    """A decoded output split into its parts (all plain strings, possibly empty)."""

    history: str
    current_plain: str
    current_markup: str


def check_task(task: str) -> str:
    """Return ``task`` or raise naming the valid tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def build_target_text(task: str, history_texts: Sequence[str], current_text: str) -> str:
    """The text the LLM is trained to write after the prompt (without eos).

    ``history_texts`` are the utterances whose speech precedes the current one, oldest first
    (for ``short_asr``: the other utterances of the random concatenation). Texts may carry
    entity markup; it is stripped everywhere except in the ``cot_ner`` answer ``T̂_i``.
    """
    check_task(task)
    history = "".join(strip_markup(text) for text in history_texts)
    current = strip_markup(current_text)
    if task == "short_asr":
        return history + current
    long_form = f"{history}{SEP_TOKEN}{current}"
    if task == "long_asr":
        return long_form
    return f"{long_form}{NER_TOKEN}{current_text}"


def _remove_markers(text: str) -> str:
    for marker in MARKERS:
        text = text.replace(marker, "")
    return text


def parse_output(task: str, text: str) -> ParsedOutput:
    """Split a decoded output into (history, current plain transcript, current markup).

    Never raises on model output: a missing ``|sep|`` makes the whole ASR part the current
    transcript, a missing ``|ner|`` answer falls back to the plain transcript (no entities),
    stray markers are removed. Each repair is logged as a warning. For ``short_asr`` and
    ``long_asr`` ``current_markup`` is the plain transcript (no entities predicted), and an
    ``|ner|`` continuation, if the model wrote one, is used as markup.
    """
    check_task(task)
    repairs: list[str] = []
    asr_part, has_ner, ner_part = text.partition(NER_TOKEN)
    if task == "short_asr":
        history, current = "", asr_part
    elif SEP_TOKEN in asr_part:
        history, _, current = asr_part.rpartition(SEP_TOKEN)
    else:
        repairs.append(f"no {SEP_TOKEN}: whole ASR part taken as the current transcript")
        history, current = "", asr_part
    if task == "cot_ner" and not has_ner:
        repairs.append(f"no {NER_TOKEN}: no entities predicted")
    cleaned = [_remove_markers(part) for part in (history, current, ner_part)]
    if cleaned != [history, current, ner_part]:
        repairs.append("stray task markers removed")
    history, current, ner_part = cleaned
    current_plain = strip_markup(current)
    markup = ner_part if has_ner else current_plain
    if repairs:
        logging.warning("malformed %s output %r: %s", task, text, "; ".join(repairs))
    return ParsedOutput(strip_markup(history), current_plain, markup)
