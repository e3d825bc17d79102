"""Connectors: frame stacking, γ placement, sizes, and the gated cross-attention inside Glm layers."""

import copy

import pytest
import torch
from helpers_tiny import make_llm

from espnet2_ext.speechllm.connectors import (
    AdapterConnector,
    CrossAttentionConnector,
    CrossAttentionDecoderLayer,
    stack_frames,
)


def test_stack_frames_pads_the_tail():
    frames = torch.arange(14.0).view(7, 2)
    stacked = stack_frames(frames, 5)
    assert stacked.shape == (2, 10)
    assert stacked[0].tolist() == list(range(10))
    assert stacked[1].tolist() == [10, 11, 12, 13] + [0] * 6


def test_segments_are_stacked_separately_with_gamma_before_current():
    conn = AdapterConnector(input_size=2, llm_hidden=4, stack=2, hidden_size=8)
    frames = torch.randn(2, 6, 2)
    segments = torch.tensor([[3, 3], [4, 0]])
    tokens, lengths = conn(frames, segments, torch.tensor([2, 1]), torch.tensor([1, 0]))
    assert lengths.tolist() == [2 + 1 + 2, 2]
    assert torch.equal(tokens[0, 2], conn.gamma)
    # Segment 2 of item 0 starts a fresh stack: its first token depends on frames 3,4 only.
    expected = conn.layers(torch.cat([frames[0, 3], frames[0, 4]]))
    # float32 rounding only (a batched product against a single vector's): values near 0 need an absolute tolerance
    torch.testing.assert_close(tokens[0, 3], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(tokens[1, 2:], torch.zeros(3, 4))


SEGMENT_CONNECTORS = {
    "cross_attention": lambda **kw: CrossAttentionConnector(input_size=2, llm_hidden=4, num_layers=1, stack=2,
                                                            attention_dim=4, num_heads=1, **kw),
    "adapter": lambda **kw: AdapterConnector(input_size=2, llm_hidden=4, stack=2, hidden_size=8, **kw),
}


@pytest.mark.parametrize("kind", sorted(SEGMENT_CONNECTORS))
def test_segment_embeddings_tell_the_current_utterance_from_its_history(kind):
    """Each utterance is encoded on its own: without segment embeddings, the same audio said before and now
    gives the same speech tokens; with them, each segment is marked by its distance from the current one."""
    frames = torch.randn(2, 2).repeat(3, 1)[None]  # three identical 2-frame utterances: history, history, current
    layout = (torch.tensor([[2, 2, 2]]), torch.tensor([3]), torch.tensor([2]))
    plain = SEGMENT_CONNECTORS[kind]()
    tokens, _ = plain(frames, *layout)
    assert plain.segment_embedding is None
    assert torch.equal(tokens[0, 0], tokens[0, 3]) and torch.equal(tokens[0, 1], tokens[0, 3])
    marked = SEGMENT_CONNECTORS[kind](segment_embeddings=2)
    tokens, _ = marked(frames, *layout)
    rows = marked.segment_embedding.weight
    base = marked.project(frames[0, :2].reshape(1, 4))[0]
    assert torch.equal(tokens[0, 2], marked.gamma)
    assert torch.allclose(tokens[0, 3], base + rows[0]) and torch.allclose(tokens[0, 1], base + rows[1])
    assert torch.allclose(tokens[0, 0], base + rows[1])  # older than the last row: shares it
    with pytest.raises(ValueError, match="segment_embeddings"):
        SEGMENT_CONNECTORS[kind](segment_embeddings=-1)


def test_history_must_leave_a_current_segment():
    conn = AdapterConnector(input_size=2, llm_hidden=4, stack=2, hidden_size=8)
    with pytest.raises(ValueError, match="history"):
        conn(torch.randn(1, 4, 2), torch.tensor([[4]]), torch.tensor([1]), torch.tensor([1]))


def _full_size(connector_class, **kwargs):
    with torch.device("meta"):
        conn = connector_class(input_size=1280, llm_hidden=4096, **kwargs)
    return sum(p.numel() for p in conn.parameters())


def test_full_size_parameter_counts_match_the_paper():
    assert abs(_full_size(AdapterConnector) / 43.0e6 - 1) < 0.01
    assert abs(_full_size(CrossAttentionConnector, num_layers=28) / 437e6 - 1) < 0.01


def _speech_memory(conn, batch=2):
    tokens, lengths = conn(torch.randn(batch, 6, 8), torch.tensor([[6]] * batch), torch.ones(batch, dtype=torch.long),
                           torch.zeros(batch, dtype=torch.long))
    return conn.memory(tokens, lengths)


def test_zero_gates_leave_the_llm_unchanged():
    llm = make_llm(vocab_size=50)
    plain = copy.deepcopy(llm)
    conn = CrossAttentionConnector.build(8, llm.config, stack=2, attention_dim=16, num_heads=2)
    conn.attach(llm)
    assert all(isinstance(layer, CrossAttentionDecoderLayer) for layer in llm.model.layers)
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        got = llm(input_ids=ids, speech_memory=_speech_memory(conn)).logits
        want = plain(input_ids=ids).logits
    assert torch.equal(got, want)
    assert set(dict(llm.named_parameters())) == set(dict(plain.named_parameters()))


def test_open_gates_change_the_output_and_get_gradients():
    llm = make_llm(vocab_size=50)
    conn = CrossAttentionConnector.build(8, llm.config, stack=2, attention_dim=16, num_heads=2, gate_init=1.0)
    conn.attach(llm)
    ids = torch.randint(3, 50, (2, 7))
    with_speech = llm(input_ids=ids, speech_memory=_speech_memory(conn)).logits
    without = llm(input_ids=ids).logits
    assert not torch.allclose(with_speech, without)
    with_speech.sum().backward()
    assert all(block.gate.grad is not None and block.speech_proj.weight.grad is not None for block in conn.blocks)
