"""Token-budget batching: exact example costs, batches within the budget, DDP-safe deterministic schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tiny import TEXTS, make_model, make_tokenizer, write_dataset

from espnet2_ext.errors import UserError
from espnet2_ext.samplers.token_budget import (
    ExampleCoster,
    budget_batches,
    padding_fraction,
    rank_schedule,
)
from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor


def _costs(n: int = 200, seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    return {f"u{i:04d}": int(c) for i, c in enumerate(rng.integers(20, 300, size=n))}


def test_batches_stay_within_the_budget_and_cover_every_example_once():
    costs = {**_costs(), "huge": 5000}
    batches = budget_batches(costs, budget=1000)
    assert sorted(u for b in batches for u in b) == sorted(costs)
    assert all(len(b) * max(costs[u] for u in b) <= 1000 for b in batches if b != ["huge"])
    assert ["huge"] in batches
    assert padding_fraction([b for b in batches if b != ["huge"]], costs) < 0.05


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (3, 2), (4, 4)])
def test_every_rank_gets_as_many_batches_and_all_examples_are_used(world, accum):
    batches = budget_batches(_costs(), budget=1000)
    per_rank = [rank_schedule(batches, world, r, accum, seed=7) for r in range(world)]
    assert len({len(s) for s in per_rank}) == 1
    assert sorted(u for s in per_rank for b in s for u in b) == sorted(_costs())
    assert rank_schedule(batches, world, 0, accum, seed=7) == per_rank[0]  # deterministic
    assert any(rank_schedule(batches, world, 0, accum, seed=s) != per_rank[0] for s in range(8, 12))  # shuffled


def test_one_process_accumulating_sees_the_updates_of_two_processes():
    batches = budget_batches(_costs(), budget=1000)
    single = rank_schedule(batches, 1, 0, 2, seed=3)
    ranks = [rank_schedule(batches, 2, r, 1, seed=3) for r in range(2)]
    assert [single[2 * j : 2 * j + 2] for j in range(len(single) // 2)] == [list(p) for p in zip(*ranks)]


def test_fewer_examples_than_ranks_is_refused():
    with pytest.raises(UserError, match="2 examples cannot be shared by 4 ranks"):
        rank_schedule([["a", "b"]], 4, 0, 1, seed=None)


@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_cost_is_the_length_of_the_llm_input_the_model_builds(tmp_path, epoch):
    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    pre = SpeechLLMPreprocessor(
        train=True, tokenizer_file=str(tmp_path / "spm.model"), feats_scp=str(data["feats.scp"]),
        text_file=str(data["text"]), history_file=str(data["history"]),
        tasks={"short_asr": 0.4, "long_asr": 0.3, "cot_ner": 0.3}, max_concat=3, max_history=1,
    )
    frames = {line.split()[0]: int(line.split()[1].split(",")[0]) for line in data["speech_shape"].read_text().splitlines()}
    coster = ExampleCoster(pre, frames, stack=2, output_lengths=lambda f: f)
    model = make_model("adapter", tokenizer)
    import kaldiio

    feats = kaldiio.load_scp(str(data["feats.scp"]))
    pre.set_epoch(epoch)
    for uid in TEXTS:
        example = {k: torch.from_numpy(v)[None] for k, v in pre(uid, {"speech": feats[uid], "text": TEXTS[uid]}).items()}
        lengths = {f"{k}_lengths": torch.tensor([v.shape[1]]) for k, v in example.items()}
        example["num_history"] = example["num_history"][0]
        speech = model.encode_speech(example["speech"], lengths["speech_lengths"], example["speech_segments"],
                                     lengths["speech_segments_lengths"], example["num_history"])
        inputs = model.build_inputs(speech, example["prompt"], lengths["prompt_lengths"], example["text"],
                                    lengths["text_lengths"])
        assert coster.cost(uid, epoch) == inputs.inputs_embeds.shape[1], uid
