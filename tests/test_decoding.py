"""Batched greedy/beam search over the KV cache: batch == one at a time, cached == uncached, beam 1 == greedy."""

import pytest
import torch
from helpers_tiny import greedy_reference, make_model, tiny_cot_ner_batch

from espnet2_ext.speechllm.decoding import (
    DecodingOptions,
    TextConstraint,
    beam_search,
    decode,
    greedy_search,
    repeated_ngram,
)

NO_GUARD = dict(repeat_ngram=1, repeat_times=1000)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cot_ner_batch(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(tiny):
    """An adapter model overfit on the four examples, so outputs have eos at different lengths."""
    tokenizer, batch = tiny
    torch.manual_seed(0)
    model = make_model("adapter", tokenizer)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(300):
        loss, stats, _ = model(**batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if stats["acc"] == 1.0 and loss < 0.05:
            break
    return model.eval()


def _inputs(model, batch, items=None):
    if items is not None:
        batch = {k: v[items] for k, v in batch.items()}
    keys = ("speech", "speech_lengths", "speech_segments", "speech_segments_lengths", "num_history")
    speech = model.encode_speech(*(batch[k] for k in keys))
    return model.build_inputs(speech, batch["prompt"], batch["prompt_lengths"])


def _random(arch, tokenizer):
    return make_model(arch, tokenizer, gate_init=0.7, seed=3).eval()


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_greedy_matches_the_model_reference(tiny, arch):
    tokenizer, batch = tiny
    model = _random(arch, tokenizer)
    hyps = greedy_search(model, _inputs(model, batch), [10] * 4, DecodingOptions(**NO_GUARD))
    assert [h.ids for h in hyps] == greedy_reference(model, batch, max_new_tokens=10)
    assert all(len(h.token_logprobs) == len(h.ids) and h.end == "max_length" for h in hyps)


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
@pytest.mark.parametrize("beam", [1, 3])
def test_batched_equals_one_at_a_time_and_cached_equals_uncached(tiny, arch, beam):
    tokenizer, batch = tiny
    model = _random(arch, tokenizer)
    limits = [6, 9, 4, 8]
    options = DecodingOptions(beam_size=beam, nbest=beam, **NO_GUARD)
    together = decode(model, _inputs(model, batch), limits, options)
    for i in range(4):
        alone = decode(model, _inputs(model, batch, [i]), [limits[i]], options)[0]
        assert [h.ids for h in alone] == [h.ids for h in together[i]]
    uncached_options = DecodingOptions(beam_size=beam, nbest=beam, use_cache=False, **NO_GUARD)
    uncached = decode(model, _inputs(model, batch), limits, uncached_options)
    assert [[h.ids for h in n] for n in uncached] == [[h.ids for h in n] for n in together]
    assert all(len(h.ids) <= limit for n, limit in zip(together, limits) for h in n)


def test_trained_model_ends_items_at_eos_independently(tiny, trained):
    tokenizer, batch = tiny
    hyps = greedy_search(trained, _inputs(trained, batch), [60] * 4)
    lengths = {len(h.ids) for h in hyps}
    assert all(h.end == "eos" for h in hyps) and len(lengths) > 1
    assert "|ner|" in tokenizer.decode(hyps[1].ids)
    for i in range(4):
        assert greedy_search(trained, _inputs(trained, batch, [i]), [60])[0].ids == hyps[i].ids


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_beam_one_is_greedy_and_wider_beams_rank_by_score(tiny, arch):
    tokenizer, batch = tiny
    model = _random(arch, tokenizer)
    inputs = _inputs(model, batch)
    greedy = greedy_search(model, inputs, [7] * 4)
    beam1 = beam_search(model, inputs, [7] * 4, DecodingOptions(beam_size=1))
    assert [h.ids for h in greedy] == [n[0].ids for n in beam1]
    assert [h.score for h in greedy] == pytest.approx([n[0].score for n in beam1])
    nbest = beam_search(model, inputs, [7] * 4, DecodingOptions(beam_size=4, nbest=4))
    for hyps in nbest:
        assert len(hyps) == 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.ids) for h in hyps}) == 4


def test_trained_beam_search_agrees_with_greedy(tiny, trained):
    inputs = _inputs(trained, tiny[1])
    greedy = greedy_search(trained, inputs, [60] * 4)
    beam = beam_search(trained, inputs, [60] * 4, DecodingOptions(beam_size=3, length_penalty=1.0))
    assert [n[0].ids for n in beam] == [h.ids for h in greedy]
    assert all(n[0].end == "eos" for n in beam)


def test_required_text_blocks_eos_and_stop_text_ends(tiny, trained):
    tokenizer, batch = tiny
    inputs = _inputs(trained, batch)
    free = greedy_search(trained, inputs, [60] * 4)
    never = TextConstraint(tokenizer.decode, require="never written")
    blocked = greedy_search(trained, inputs, [60] * 4, DecodingOptions(**NO_GUARD), never)
    for f, b in zip(free, blocked):
        assert b.ids[: len(f.ids)] == f.ids and len(b.ids) == 60 and b.end == "max_length"
    stopped = greedy_search(trained, inputs, [60] * 4, constraint=TextConstraint(tokenizer.decode, stop="|ner|"))
    for f, s in zip(free, stopped):
        assert s.end == "stop" and tokenizer.decode(s.ids).endswith("|ner|") and f.ids[: len(s.ids)] == s.ids


def test_repetition_guard():
    assert repeated_ngram([5, 1, 2, 1, 2, 1, 2], max_n=3, times=3) == 2
    assert repeated_ngram([1, 2, 1, 2], max_n=3, times=3) == 0
    assert repeated_ngram([7, 7, 7], max_n=1, times=3) == 1
    assert repeated_ngram([1, 2, 3, 1, 2, 4], max_n=3, times=2) == 0


def test_repetition_guard_cuts_a_loop(tiny):
    tokenizer, batch = tiny
    model = _random("adapter", tokenizer)
    # a model stuck on token 7
    model.llm.lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([7]), 100.0))
    hyp = greedy_search(model, _inputs(model, batch), [50] * 4, DecodingOptions(repeat_ngram=4, repeat_times=5))[0]
    assert hyp.end == "repetition" and hyp.ids == [7]


def test_length_limit_follows_the_input():
    options = DecodingOptions(maxlenratio=0.5, maxlen_const=4, maxlen_cap=30)
    assert options.max_new_tokens(10) == 9
    assert options.max_new_tokens(1000) == 30
    with pytest.raises(ValueError, match="nbest"):
        DecodingOptions(beam_size=2, nbest=3)


def _load_bench(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_benchmark_runs_every_configuration(tmp_path):
    out = tmp_path / "bench.json"
    result = _load_bench("bench_decoding").main(["--utts", "4", "--new_tokens", "3", "--batch_sizes", "1", "4", "--out", str(out)])
    runs = result["archs"]["adapter"]["runs"]
    assert {(r["batch_size"], r["kv_cache"]) for r in runs} == {(1, False), (1, True), (4, False), (4, True)}
    assert all(r["rtf"] > 0 for r in runs) and out.is_file()


def test_gpu_benchmark_runs_tiny_on_cpu_and_refuses_full_size_without_gpu(tmp_path):
    bench = _load_bench("gpu_full_size")
    result = bench.main(["--tiny", "--repeats", "1", "--out", str(tmp_path / "gpu.json")])
    for arch in ("adapter", "cross_attention"):
        assert len(result[arch]["decoding"]) == 4 and result[arch]["train_step"]["wall_s"] > 0
    assert result["whisper_encoder_batch8_30s"]["wall_s"] > 0
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            bench.main(["--out", str(tmp_path / "full.json")])
