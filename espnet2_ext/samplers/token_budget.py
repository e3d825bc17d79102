"""Mini-batches filled up to a token budget (``--batch_type token_budget``, the budget in ``--batch_bins``).

An example's cost is the LLM tokens it makes: ``[gMASK] sop``, the stacked speech tokens of
every segment (history or concatenated partners included, and γ), ``|asr|``, the target and eos
— known before loading anything, because the preprocessor's random choices are a function of
(seed, epoch, utterance) (:meth:`SpeechLLMPreprocessor.plan`) and the frame counts are in the
shape file. Each epoch the examples are sorted by cost and cut into batches whose padded size
(utterances × longest cost) stays within the budget, so a batch computes few padding tokens and
its activations stay within what ``plan_memory`` planned.

Distributed and accumulated training: the batches are split (largest first) until their number
is a multiple of ``world_size`` (and, when possible, of ``world_size × accum_grad``), grouped
into updates of ``world_size × accum_grad`` neighbouring (so similar) batches, and the updates
are shuffled with ``seed + epoch``. Rank r takes batch ``j·world_size + r`` of each update, so
every rank gets the same number of batches, and one process with ``accum_grad = k·A`` sees the
same updates as k processes with ``accum_grad = A``. Everything is deterministic in (seed, epoch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from espnet2.iterators.abs_iter_factory import AbsIterFactory
from espnet2.iterators.sequence_iter_factory import SequenceIterFactory

from espnet2_ext.errors import UserError

BATCH_TYPE = "token_budget"


def budget_batches(costs: Mapping[str, int], budget: int) -> list[list[str]]:
    """Examples sorted by cost, cut into batches with ``len(batch) * max cost <= budget``.

    An example costlier than the whole budget gets a batch of its own (counted by :func:`oversized`).
    """
    batches: list[list[str]] = []
    current: list[str] = []
    for uid in sorted(costs, key=lambda u: (costs[u], u)):
        if current and (len(current) + 1) * costs[uid] > budget:
            batches.append(current)
            current = []
        current.append(uid)
    if current:
        batches.append(current)
    return batches


def oversized(costs: Mapping[str, int], budget: int) -> list[str]:
    return sorted(u for u, c in costs.items() if c > budget)


def split_to_multiple(batches: list[list[str]], multiple: int) -> None:
    """Split the largest batches in two (in place) until their number is a multiple of ``multiple``.

    Possible whenever the next multiple is at most the number of examples (all singletons at worst).
    """
    target = -(-len(batches) // multiple) * multiple
    if target > sum(map(len, batches)):
        raise UserError(f"{sum(map(len, batches))} examples cannot make {target} batches (a multiple of {multiple})")
    while len(batches) < target:
        index = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
        batch = batches[index]
        batches[index : index + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]


def rank_schedule(
    batches: Sequence[Sequence[str]], world_size: int, rank: int, accum_grad: int, seed: int | None
) -> list[list[str]]:
    """This rank's batches in order: updates of ``world_size × accum_grad`` neighbours, shuffled by ``seed``."""
    batches = [list(b) for b in batches]
    size = world_size * accum_grad
    examples = sum(map(len, batches))
    if -(-len(batches) // size) * size <= examples:
        split_to_multiple(batches, size)
    elif examples >= world_size:
        split_to_multiple(batches, world_size)
    else:
        raise UserError(f"{examples} examples cannot be shared by {world_size} ranks: give more data or fewer GPUs")
    updates = [batches[i : i + size] for i in range(0, len(batches), size)]
    full = [u for u in updates if len(u) == size]
    if seed is not None:
        np.random.RandomState(seed).shuffle(full)
    return [batch for update in full + updates[len(full) :] for batch in update[rank::world_size]]


def padding_fraction(batches: Sequence[Sequence[str]], costs: Mapping[str, int]) -> float:
    """Share of computed (padded) tokens that are padding: ``1 - Σ cost / Σ len(batch) · max cost``."""
    computed = sum(len(b) * max(costs[u] for u in b) for b in batches)
    return 1.0 - sum(costs[u] for b in batches for u in b) / computed


@dataclass
class ExampleCoster:
    """Token cost of an example from its plan: frames from the shape file, tokens from the tokenizer."""

    preprocessor: object  # SpeechLLMPreprocessor (plan, texts, tokenizer, prompt_ids)
    frames: Mapping[str, int]  # input frames per utterance (the speech shape file)
    stack: int  # encoder frames per speech token
    output_lengths: Callable[[torch.Tensor], torch.Tensor]  # input frames -> encoder frames (cumulative)
    prefix_tokens: int = 2  # [gMASK] sop

    def frames_of(self, uid: str, context: str) -> int:
        if uid not in self.frames:
            raise UserError(f"utterance {uid} ({context}) is not in the speech shape file")
        return self.frames[uid]

    def parts(self, uid: str, epoch: int) -> tuple[int, int]:
        """(speech tokens incl. γ, text tokens: prefix, prompt, target and eos) of ``uid``'s example in ``epoch``."""
        pre = self.preprocessor
        plan = pre.plan(uid, pre.texts[uid], self.frames_of, epoch)
        bounds = self.output_lengths(torch.tensor(np.cumsum([self.frames[s] for s in plan.segments])))
        encoder_frames = torch.diff(bounds, prepend=bounds.new_zeros(1)).tolist()
        speech = sum(math.ceil(f / self.stack) for f in encoder_frames) + (plan.num_history > 0)
        text = self.prefix_tokens + len(pre.prompt_ids) + len(pre.tokenizer.encode(plan.target)) + 1
        return speech, text

    def cost(self, uid: str, epoch: int) -> int:
        return sum(self.parts(uid, epoch))

    def costs(self, epoch: int) -> dict[str, int]:
        missing = sorted(set(self.frames) - set(self.preprocessor.texts))
        if missing:
            raise UserError(f"utterances {missing[:5]} of the shape file have no transcript in the text file")
        return {uid: self.cost(uid, epoch) for uid in self.frames}


class TokenBudgetIterFactory(AbsIterFactory):
    """Per epoch: plan every example, batch by the token budget, this rank's schedule, ESPnet's data loader."""

    def __init__(
        self,
        coster: ExampleCoster,
        budget: int,
        loader: Callable[[list[list[str]]], SequenceIterFactory],
        world_size: int,
        rank: int,
        accum_grad: int,
        seed: int,
        shuffle: bool,
        mode: str,
    ) -> None:
        self.coster, self.budget, self.loader = coster, budget, loader
        self.world_size, self.rank, self.accum_grad = world_size, rank, accum_grad
        self.seed, self.shuffle, self.mode = seed, shuffle, mode

    def batches(self, epoch: int) -> list[list[str]]:
        costs = self.coster.costs(epoch)
        batches = budget_batches(costs, self.budget)
        too_big = oversized(costs, self.budget)
        if too_big:
            logging.warning(
                "[%s] %d example(s) exceed batch_bins=%d tokens alone (largest %d, e.g. %s); each gets a batch of "
                "its own: raise batch_bins (check plan_memory) or lower max_input_seconds",
                self.mode, len(too_big), self.budget, max(costs[u] for u in too_big), too_big[0],
            )
        schedule = rank_schedule(
            batches, self.world_size, self.rank, self.accum_grad, self.seed + epoch if self.shuffle else None
        )
        sizes = [len(b) for b in batches]
        logging.info(
            "[%s] epoch %d: %d batches of <= %d tokens (%d per rank), %.1f utterances per batch, %.1f per update "
            "(x %d ranks x accum_grad %d), padding %.1f%% of computed tokens",
            self.mode, epoch, len(batches), self.budget, len(schedule), np.mean(sizes),
            np.mean(sizes) * self.world_size * self.accum_grad, self.world_size, self.accum_grad,
            100 * padding_fraction(batches, costs),
        )
        return schedule

    def build_iter(self, epoch: int, shuffle: bool | None = None):
        self.coster.preprocessor.set_epoch(epoch)
        return self.loader(self.batches(epoch)).build_iter(epoch, shuffle=False)
