"""Static-cache greedy search (fast_decoding) gives the reference's hypotheses; its GPU bench runs tiny on CPU."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers_tiny import make_model, tiny_cot_ner_batch

from espnet2_ext.speechllm import fast_decoding
from espnet2_ext.speechllm.decoding import DecodingOptions, TextConstraint, greedy_search
from espnet2_ext.speechllm.fast_decoding import length_sorted_batches, static_greedy_search, workspace_stats

NO_GUARD = dict(repeat_ngram=1, repeat_times=1000)
ARCHS = ["adapter", "cross_attention"]
# (sync_every, cache_chunk): read back every step / every 3 steps; a cache grown every 2 tokens / never.
SCHEDULES = [(1, 64), (3, 2)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny CoT-NER batch (items 1 and 3 carry one history utterance) with forced history text of
    0/3/1/5 tokens appended to the prompts, so every item is left-padded differently in both architectures."""
    tokenizer, batch = tiny_cot_ner_batch(tmp_path_factory.mktemp("tiny"))
    generator = torch.Generator().manual_seed(0)
    forced = [torch.randint(3, 36, (extra,), generator=generator) for extra in (0, 3, 1, 5)]
    rows = [torch.cat([batch["prompt"][i, : batch["prompt_lengths"][i]], text]) for i, text in enumerate(forced)]
    batch = {**batch, "prompt": torch.nn.utils.rnn.pad_sequence(rows, batch_first=True),
             "prompt_lengths": torch.tensor([len(r) for r in rows])}  # fmt: skip
    return tokenizer, batch


@pytest.fixture(scope="module")
def models(tiny):
    """Both architectures with sharp random weights (std 0.3): diverse outputs that depend on the speech."""
    built = {}
    for seed, arch in enumerate(ARCHS, start=3):
        model = make_model(arch, tiny[0], gate_init=1.0, seed=seed).eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        built[arch] = model
    return built


def _inputs(model, batch, items=None):
    if items is not None:
        batch = {k: v[items] for k, v in batch.items()}
    keys = ("speech", "speech_lengths", "speech_segments", "speech_segments_lengths", "num_history")
    speech = model.encode_speech(*(batch[k] for k in keys))
    return model.build_inputs(speech, batch["prompt"], batch["prompt_lengths"])


def _both(model, inputs, limits, constraint=None, sync_every=4, cache_chunk=64, compile="none", **options):
    reference = greedy_search(model, inputs, limits, DecodingOptions(**options), constraint)
    static = DecodingOptions(cache="static", compile=compile, sync_every=sync_every, cache_chunk=cache_chunk, **options)
    return reference, greedy_search(model, inputs, limits, static, constraint)


def _assert_same(reference, fast):
    assert [h.ids for h in fast] == [h.ids for h in reference]
    assert [h.end for h in fast] == [h.end for h in reference]
    for r, f in zip(reference, fast):
        assert f.token_logprobs == pytest.approx(r.token_logprobs, rel=1e-5, abs=1e-5)
        assert f.score == pytest.approx(r.score, rel=1e-5, abs=1e-5)


def _text(ids):
    return "".join(f"<{i}>" for i in ids)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("items", [[0], [3, 1], [2, 0, 3], [1, 2, 3, 0]])
def test_static_cache_matches_reference_for_any_batch(tiny, models, arch, items):
    model = models[arch]
    inputs = _inputs(model, tiny[1], items)
    limits = [3, 16, 1, 7][: len(items)]
    for sync_every, cache_chunk in SCHEDULES:
        reference, fast = _both(model, inputs, limits, sync_every=sync_every, cache_chunk=cache_chunk, **NO_GUARD)
        _assert_same(reference, fast)
    assert len({tuple(h.ids) for h in reference}) == len(items)  # the items differ, so a row mix-up would show


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_repetition_and_text_constraints(tiny, models, arch):
    """eos at different lengths, the repetition guard, and require/stop texts, each where it changes the output."""
    model = models[arch]
    inputs = _inputs(model, tiny[1])
    free = greedy_search(model, inputs, [20] * 4, DecodingOptions(**NO_GUARD))
    counts = torch.bincount(torch.tensor([t for h in free for t in h.ids[2:9]]))
    eos = int(counts.argmax())  # a token the rows write at different steps: as eos, rows end at different lengths
    model.eos_id = eos
    try:
        reference, fast = _both(model, inputs, [20] * 4)
        _assert_same(reference, fast)
        assert {h.end for h in reference} >= {"eos"} and len({len(h.ids) for h in reference}) > 1
        ended = next(h for h in reference if h.end == "eos" and h.ids)
        for constraint in (
            TextConstraint(_text, require=_text(ended.ids[:1])),  # some rows may end at eos after it, others not
            TextConstraint(_text, require="never written"),
            TextConstraint(_text, stop=_text(ended.ids[-1:])),
        ):
            for sync_every in (1, 3):
                reference, fast = _both(model, inputs, [20] * 4, constraint, sync_every=sync_every, cache_chunk=4)
                _assert_same(reference, fast)
        required = greedy_search(model, inputs, [20] * 4, DecodingOptions(cache="static"),
                                 TextConstraint(_text, require=_text(ended.ids[:1])))  # fmt: skip
        assert "eos" in {h.end for h in required}  # eos blocked on the device, allowed again by the host
    finally:
        model.eos_id = tiny[0].eos_id


def test_repetition_guard_and_length_limit(tiny, models):
    model = models["adapter"]
    inputs = _inputs(model, tiny[1])
    handle = model.llm.lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([7]), 100.0))
    try:
        reference, fast = _both(model, inputs, [50, 3, 50, 1], repeat_ngram=4, repeat_times=5)
    finally:
        handle.remove()
    _assert_same(reference, fast)
    assert [h.end for h in fast] == ["repetition", "max_length", "repetition", "max_length"]


@pytest.mark.parametrize("arch", ARCHS)
def test_workspaces_are_reused_grown_and_evicted_without_changing_outputs(tiny, models, arch, monkeypatch):
    monkeypatch.setattr(fast_decoding, "MAX_WORKSPACES", 2)
    model = models[arch]
    fast_decoding.release_workspaces(model)
    options = DecodingOptions(cache="static", cache_chunk=3, **NO_GUARD)
    reference = DecodingOptions(**NO_GUARD)
    for items in [[0, 1], [2, 3], [1, 0], [3], [0, 1]]:  # same and different shapes, in turn
        inputs = _inputs(model, tiny[1], items)
        expected = greedy_search(model, inputs, [8] * len(items), reference)
        _assert_same(expected, static_greedy_search(model, inputs, [8] * len(items), options))
    stats = workspace_stats(model)
    assert stats["grown"] > 0 and stats["workspaces"] > fast_decoding.MAX_WORKSPACES
    assert len(fast_decoding._WORKSPACES[model].spaces) <= fast_decoding.MAX_WORKSPACES


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_prefill_is_the_reference_s_and_precisions_do_not_share_workspaces(tiny, models, arch):
    """Under bf16 autocast keys and values differ in dtype; the first token and its log-probability are
    the reference's bit for bit (same prefill); later steps agree up to the attention's rounding."""
    model = models[arch]
    assert hasattr(model, "compute_dtype")  # decode_step runs under autocast to it
    inputs = _inputs(model, tiny[1])
    try:
        model.compute_dtype = torch.bfloat16
        reference, fast = _both(model, inputs, [4] * 4, **NO_GUARD)
        assert [h.ids[0] for h in fast] == [h.ids[0] for h in reference]
        assert [h.token_logprobs[0] for h in fast] == [h.token_logprobs[0] for h in reference]
        assert all(f == pytest.approx(r, abs=0.1) for h, g in zip(reference, fast)
                   for r, f in zip(h.token_logprobs, g.token_logprobs))  # fmt: skip
    finally:
        model.compute_dtype = torch.float32
    _assert_same(*_both(model, inputs, [4] * 4, **NO_GUARD))


def test_eager_attention_takes_an_additive_mask(tiny, models):
    model = models["cross_attention"]
    inputs = _inputs(model, tiny[1])
    _both(model, inputs, [3, 16, 1, 7], **NO_GUARD)  # leaves an SDPA workspace of this shape behind
    model.llm.set_attn_implementation("eager")
    try:
        reference, fast = _both(model, inputs, [3, 16, 1, 7], **NO_GUARD)
    finally:
        model.llm.set_attn_implementation("sdpa")
    _assert_same(reference, fast)


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_step_is_one_graph_without_host_syncs(tiny, models, arch, monkeypatch):
    """Dynamo traces the whole decode step in one graph (fullgraph: no break, no .item()), which is what a
    CUDA graph capture needs; ``compile='inductor'`` runs it (here with dynamo's eager backend: no C++ build)."""
    torch._dynamo.reset()
    traced = torch.compile(fast_decoding.decode_step, backend="eager", fullgraph=True, dynamic=False)
    monkeypatch.setitem(fast_decoding._COMPILED, "inductor", traced)
    model = models[arch]
    reference, fast = _both(model, _inputs(model, tiny[1]), [3, 16, 1, 7], compile="inductor", **NO_GUARD)
    _assert_same(reference, fast)


def test_cuda_graph_option_decodes_eagerly_off_cuda(tiny, models):
    model = models["adapter"]
    fast_decoding.release_workspaces(model)
    reference, fast = _both(model, _inputs(model, tiny[1]), [3, 16, 1, 7], compile="cudagraph", **NO_GUARD)
    _assert_same(reference, fast)
    assert workspace_stats(model).get("captures", 0) == 0


def test_options_refuse_what_the_static_cache_cannot_do():
    with pytest.raises(ValueError, match="beam_size 1"):
        DecodingOptions(cache="static", beam_size=2)
    with pytest.raises(ValueError, match="needs cache='static'"):
        DecodingOptions(compile="cudagraph")
    with pytest.raises(ValueError, match="cache in"):
        DecodingOptions(cache="paged")
    with pytest.raises(ValueError, match="sync_every"):
        DecodingOptions(cache="static", sync_every=0)


def test_length_sorted_batches():
    assert length_sorted_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]


def _load_bench(name):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_decoding_bench_runs_tiny_on_cpu(tmp_path):
    bench = _load_bench("gpu_decoding")
    settings = ["reference_b4", "static_cudagraph_b4_sync2"]
    bench.main(["--tiny", "--out", str(tmp_path), "--utts", "4", "--latency_utts", "1", "--settings", *settings])
    (out,) = tmp_path.glob("gpu_decoding_*.json")
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and {"torch", "transformers"} <= set(result["environment"])
    assert result["load"]["utterances"] == 7176 and 4.5 < result["load"]["mean_s"] < 5.5
    assert result["expected_s"]["static_cudagraph_b256"] < result["expected_s"]["static_cudagraph_b32"]
    for arch in ARCHS:
        runs = {r["name"]: r for r in result["archs"][arch]["runs"]}
        assert set(runs) == set(settings)
        assert all(r["utt_per_s"] > 0 and r["rtf"] > 0 and r["test_set_s"] > 0 for r in runs.values())
        assert runs["static_cudagraph_b4_sync2"]["same_ids_as"] == {"reference_b4": "4/4"}
        latency = result["archs"][arch]["batch1_latency"]
        assert [x["decoder"] for x in latency] == ["reference", "static", "static_cudagraph"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            bench.main(["--out", str(tmp_path)])
