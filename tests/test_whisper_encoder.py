"""The frozen, length-aware Whisper encoder and its loaders (HF directory, OpenAI .pt)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet2_ext.speechllm.whisper_encoder import (
    FrozenWhisperEncoder,
    encoder_output_lengths,
    load_whisper_config,
    load_whisper_encoder,
    openai_whisper_name_to_hf,
)
from espnet2_ext.upstream_formats import save_whisper_hf, save_whisper_openai_pt, tiny_whisper_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random Whisper saved both ways; returns (stock model, HF dir, OpenAI .pt)."""
    root = tmp_path_factory.mktemp("whisper")
    model = save_whisper_hf(tiny_whisper_config(n_mels=80), root / "hf")
    pt = save_whisper_openai_pt(model, root / "tiny.pt")
    return model, root / "hf", pt


def stock_encoder(model) -> WhisperEncoder:
    return model.get_encoder().eval()


def test_equals_stock_encoder_at_3000_frames(saved):
    model, hf_dir, _ = saved
    feats = torch.randn(2, 3000, 80)
    with torch.no_grad():
        want = stock_encoder(model)(feats.transpose(1, 2)).last_hidden_state
    for pad_to_30s in (False, True):
        encoder = load_whisper_encoder(hf_dir, pad_to_30s=pad_to_30s)
        with torch.no_grad():
            hs, hs_lengths = encoder(feats, torch.tensor([3000, 3000]))
        assert hs_lengths.tolist() == [1500, 1500]
        assert (hs - want).abs().max() <= 1e-5


def test_padded_batch_items_equal_single_runs(saved):
    _, hf_dir, _ = saved
    encoder = load_whisper_encoder(hf_dir)
    lengths = torch.tensor([57, 120, 90])
    feats = torch.randn(3, 120, 80)
    with torch.no_grad():
        hs, hs_lengths = encoder(feats, lengths)
        assert hs_lengths.tolist() == [29, 60, 45]
        for b, n in enumerate(lengths.tolist()):
            single, _ = encoder(feats[b : b + 1, :n], torch.tensor([n]))
            assert (hs[b, : hs_lengths[b]] - single[0]).abs().max() <= 1e-4


def test_pad_to_30s_pads_with_silence_and_trims(saved):
    """Short input is padded to 3000 frames with the log-mel of digital silence (max - 2)."""
    model, hf_dir, _ = saved
    encoder = load_whisper_encoder(hf_dir, pad_to_30s=True)
    feats = torch.rand(2, 200, 80)
    lengths = torch.tensor([200, 150])
    with torch.no_grad():
        hs, hs_lengths = encoder(feats, lengths)
        assert hs_lengths.tolist() == [100, 75] and hs.shape == (2, 100, 16)
        window = torch.full((1, 3000, 80), feats[1, :150].max().item() - 2.0)
        window[0, :150] = feats[1, :150]
        want = stock_encoder(model)(window.transpose(1, 2)).last_hidden_state[0, :75]
    assert (hs[1, :75] - want).abs().max() <= 1e-5


def test_frozen_and_always_eval(saved):
    _, hf_dir, _ = saved
    encoder = load_whisper_encoder(hf_dir)
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())


def test_openai_checkpoint_loads_the_same_weights(saved):
    model, hf_dir, pt = saved
    from_hf, from_pt = load_whisper_encoder(hf_dir), load_whisper_encoder(pt)
    assert load_whisper_config(pt).num_mel_bins == load_whisper_config(hf_dir).num_mel_bins == 80
    for name, tensor in from_hf.state_dict().items():
        assert torch.equal(tensor, from_pt.state_dict()[name]), name
    payload = torch.load(pt, weights_only=True)
    assert "encoder.blocks.1.attn.key.weight" in payload["model_state_dict"]
    assert "encoder.blocks.1.attn.key.bias" not in payload["model_state_dict"]
    assert "decoder.blocks.0.cross_attn_ln.weight" in payload["model_state_dict"]


def test_openai_names():
    assert openai_whisper_name_to_hf("encoder.blocks.3.attn.query.weight") == "encoder.layers.3.self_attn.q_proj.weight"
    assert openai_whisper_name_to_hf("encoder.blocks.3.mlp.2.bias") == "encoder.layers.3.fc2.bias"
    assert openai_whisper_name_to_hf("encoder.blocks.0.mlp_ln.weight") == "encoder.layers.0.final_layer_norm.weight"
    assert openai_whisper_name_to_hf("encoder.ln_post.bias") == "encoder.layer_norm.bias"
    assert openai_whisper_name_to_hf("encoder.positional_embedding") == "encoder.embed_positions.weight"


def test_whisper_model_directory_also_loads(tmp_path):
    model = save_whisper_hf(tiny_whisper_config(n_mels=128), tmp_path, conditional_generation=False)
    encoder = load_whisper_encoder(tmp_path, dtype=torch.bfloat16)
    assert encoder.num_mel_bins == 128 and encoder.conv1.weight.dtype == torch.bfloat16
    assert torch.equal(encoder.conv1.weight.float(), model.encoder.conv1.weight.bfloat16().float())


def test_missing_unexpected_and_misshapen_keys_are_listed(saved, tmp_path):
    _, _, pt = saved
    payload = torch.load(pt, weights_only=True)
    state = payload["model_state_dict"]
    del state["encoder.blocks.1.mlp.0.weight"]
    state["encoder.blocks.0.attn.key.bias"] = torch.zeros(16)
    state["encoder.conv2.weight"] = torch.zeros(16, 16, 5)
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as err:
        load_whisper_encoder(tmp_path / "broken.pt")
    message = str(err.value)
    assert "broken.pt" in message
    assert "missing keys [layers.1.fc1.weight]" in message
    assert "unexpected keys [layers.0.self_attn.k_proj.bias]" in message
    assert "conv2.weight: checkpoint (16, 16, 5) vs model (16, 16, 3)" in message


def test_not_a_whisper_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "glm"}')
    with pytest.raises(ValueError, match="expected 'whisper'"):
        load_whisper_encoder(tmp_path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an OpenAI Whisper checkpoint"):
        load_whisper_encoder(tmp_path / "x.pt")


def test_too_long_input_needs_pad_to_30s(saved):
    _, hf_dir, _ = saved
    with pytest.raises(ValueError, match="exceed the encoder's 1500 positions"):
        load_whisper_encoder(hf_dir)(torch.zeros(1, 3002, 80), torch.tensor([3002]))


def test_output_lengths():
    assert encoder_output_lengths(torch.tensor([1, 2, 3, 3000])).tolist() == [1, 1, 2, 1500]
    assert issubclass(FrozenWhisperEncoder, WhisperEncoder)
