"""The paper's input path (--input_type mel): concatenated log-mel through the frozen Whisper in the
model, split at the utterance boundaries, against the cached path (encoder outputs dumped per utterance)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from espnet2_ext.errors import UserError
from espnet2_ext.speechllm.backbones import PrecomputedEncoder, WhisperSpeechEncoder
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.speechllm.frontend import whisper_log_mel
from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor
from espnet2_ext.speechllm.whisper_encoder import load_whisper_encoder
from espnet2_ext.tasks.speechllm import check_input_type
from espnet2_ext.text.chatglm3_tokenizer import ChatGLM3Tokenizer
from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config
from helpers_tiny import TEXTS, make_llm, make_tokenizer

D_MODEL, STACK = 16, 2


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper") / "hf"
    torch.manual_seed(0)
    save_whisper_hf(tiny_whisper_config(d_model=D_MODEL), path)
    return path


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm")
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(spm_dir):
    return ChatGLM3Tokenizer(spm_dir / "spm.model")


def _mel(seconds: float, seed: int) -> torch.Tensor:
    wave = torch.from_numpy(np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * 16000)).astype(np.float32))
    return whisper_log_mel(wave, n_mels=80, pad_to_30s=False)[0]  # (T, 80)


def _model(encoder, connector_class, tokenizer) -> SpeechLLMModel:
    llm = make_llm(tokenizer.vocab_size)
    torch.manual_seed(1)
    if connector_class is AdapterConnector:
        connector = AdapterConnector.build(D_MODEL, llm.config, stack=STACK, hidden_size=32)
    else:
        connector = CrossAttentionConnector.build(D_MODEL, llm.config, stack=STACK, attention_dim=8, num_heads=2)
    return SpeechLLMModel(encoder, connector, llm, tokenizer.prefix_ids, tokenizer.eos_id).eval()


def _speech_tokens(model: SpeechLLMModel, segments: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    speech = torch.cat(segments)[None]
    seg = torch.tensor([[s.shape[0] for s in segments]])
    with torch.no_grad():
        out = model.encode_speech(speech, seg.sum(1), seg, torch.tensor([len(segments)]), torch.tensor([len(segments) - 1]))
    return out.tokens[0, : int(out.lengths[0])], out


@pytest.mark.parametrize("connector_class", [AdapterConnector, CrossAttentionConnector])
@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_single_utterance_gives_the_same_speech_tokens_on_both_paths(whisper, tokenizer, connector_class, pad_to_30s):
    """Cached: the encoder output dumped once (stage 3). Mel: Whisper inside the model. One utterance: equal."""
    mel = _mel(2.3, seed=0)
    with torch.no_grad():  # what dump_feats --encoder_out writes for this utterance
        dumped, dumped_len = load_whisper_encoder(whisper, pad_to_30s=pad_to_30s)(mel[None], torch.tensor([len(mel)]))
    cached = _model(PrecomputedEncoder(D_MODEL), connector_class, tokenizer)
    on_mel = _model(WhisperSpeechEncoder(str(whisper), pad_to_30s=pad_to_30s), connector_class, tokenizer)
    on_mel.load_state_dict(cached.state_dict())
    tokens_cached, _ = _speech_tokens(cached, [dumped[0, : int(dumped_len[0])]])
    tokens_mel, _ = _speech_tokens(on_mel, [mel])
    torch.testing.assert_close(tokens_mel, tokens_cached, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_gamma_sits_at_the_boundary_of_the_concatenated_encoding(whisper, tokenizer, pad_to_30s):
    """History and current utterance are encoded together (Whisper hears the context) and split where
    the current utterance's frames start: its tokens come from the shared encoding, after γ."""
    history, current = _mel(1.31, seed=1), _mel(0.97, seed=2)  # odd frame counts: the stride-2 boundary
    model = _model(WhisperSpeechEncoder(str(whisper), pad_to_30s=pad_to_30s), AdapterConnector, tokenizer)
    tokens, _ = _speech_tokens(model, [history, current])
    with torch.no_grad():
        both = torch.cat([history, current])
        frames, _ = model.encoder(both[None], torch.tensor([len(both)]))
        split = (len(history) - 1) // 2 + 1
        total = (len(both) - 1) // 2 + 1
        expect_hist = model.connector.project(_stacked(frames[0, :split]))
        expect_cur = model.connector.project(_stacked(frames[0, split:total]))
    n_hist = expect_hist.shape[0]
    torch.testing.assert_close(tokens[:n_hist], expect_hist)
    torch.testing.assert_close(tokens[n_hist], model.connector.gamma)
    torch.testing.assert_close(tokens[n_hist + 1 :], expect_cur)
    # with an even boundary the current utterance gets as many tokens as alone, but other values:
    # Whisper heard the history before it (and its positions continue from there)
    history, current = _mel(1.30, seed=1), _mel(0.96, seed=2)
    together, _ = _speech_tokens(model, [history, current])
    alone, _ = _speech_tokens(model, [current])
    assert together[-alone.shape[0] :].shape == alone.shape
    assert not torch.allclose(together[-alone.shape[0] :], alone, atol=1e-3)


def _stacked(frames: torch.Tensor) -> torch.Tensor:
    from espnet2_ext.speechllm.connectors.base import stack_frames

    return stack_frames(frames, STACK)


def test_concatenation_is_padded_to_30s_and_history_cropped_oldest_first(tmp_path, spm_dir, whisper):
    """30 s counted in log-mel frames (100 per second): the oldest history goes first, never the current one."""
    import kaldiio

    mels = {uid: _mel(0.5 + 0.25 * i, seed=i).numpy() for i, uid in enumerate(["s_u1", "s_u2", "s_u3"])}
    kaldiio.save_ark(str(tmp_path / "feats.ark"), mels, scp=str(tmp_path / "feats.scp"))
    texts = dict(zip(mels, list(TEXTS.values())[:3]))
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()), encoding="utf-8")
    (tmp_path / "history").write_text("s_u1\ns_u2 s_u1\ns_u3 s_u1 s_u2\n")
    frames = {u: m.shape[0] for u, m in mels.items()}
    fits_two = (frames["s_u3"] + frames["s_u2"] + frames["s_u1"] - 1) / 100  # all three do not fit, two do
    pre = SpeechLLMPreprocessor(
        train=False, tokenizer_file=str(spm_dir / "spm.model"),
        feats_scp=str(tmp_path / "feats.scp"), text_file=str(tmp_path / "text"),
        history_file=str(tmp_path / "history"), eval_task="long_asr", eval_history=2,
        max_input_seconds=fits_two, frames_per_second=WhisperSpeechEncoder.frames_per_second,
    )
    out = pre("s_u3", {"speech": mels["s_u3"], "text": texts["s_u3"]})
    assert out["speech_segments"].tolist() == [frames["s_u2"], frames["s_u3"]] and out["num_history"].tolist() == [1]
    # the model pads the concatenation to Whisper's 3000 frames and keeps the valid output frames
    encoder = WhisperSpeechEncoder(str(whisper), pad_to_30s=True)
    speech = torch.from_numpy(out["speech"])[None]
    with torch.no_grad():
        hs, lengths = encoder(speech, torch.tensor([speech.shape[1]]))
        padded, _ = encoder.whisper._forward_30s(speech, torch.tensor([speech.shape[1]]))
    assert lengths.tolist() == [(speech.shape[1] - 1) // 2 + 1] and hs.shape[1] == lengths[0]
    torch.testing.assert_close(hs, padded)


def _args(tmp_path, encoder: str, input_type: str) -> argparse.Namespace:
    (tmp_path / "feats_conf.json").write_text(json.dumps({"input_type": input_type, "pad_to_30s": False, "n_mels": 80}))
    entries = [(str(tmp_path / "feats.scp"), "speech", "kaldi_ark"), (str(tmp_path / "text"), "text", "text")]
    return argparse.Namespace(encoder=encoder, train_data_path_and_name_and_type=entries,
                              valid_data_path_and_name_and_type=entries)


@pytest.mark.parametrize("encoder,input_type", [("precomputed", "mel"), ("whisper", "encoder_output")])
def test_an_encoder_that_does_not_read_the_features_is_refused(tmp_path, encoder, input_type):
    with pytest.raises(UserError, match=f"{input_type} features .* encoder '{encoder}' reads .*--input_type {input_type}"):
        check_input_type(_args(tmp_path, encoder, input_type))
    check_input_type(_args(tmp_path, "whisper" if encoder == "precomputed" else "precomputed", input_type))
