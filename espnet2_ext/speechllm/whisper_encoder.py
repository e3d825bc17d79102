"""Whisper's encoder, frozen, for variable-length (or 30-s padded) batches.

Stock ``WhisperEncoder.forward`` insists on exactly 3000 mel frames and has no
padding mask. :class:`FrozenWhisperEncoder` keeps the stock module (and so its
parameter names and checkpoints) and replaces only ``forward``:
conv1 -> GELU -> conv2 -> GELU -> + ``embed_positions.weight[:T']`` -> layers
with a key padding mask -> layer_norm, with ``T' = (T - 1) // 2 + 1``. Frames
past an item's length are zeroed before each convolution, so a padded batch
item equals the same utterance run alone.

``pad_to_30s=True`` is Whisper's own regime: the input is padded (with the
log-mel value of digital silence) or cropped to 3000 frames, no mask is used,
and the output is trimmed to the valid frames, which equals the stock encoder.

Weights come from a Hugging Face Whisper directory or an OpenAI ``.pt`` file;
both are checked key by key and shape by shape (a stock ``from_pretrained`` of
a whole-model directory into ``WhisperEncoder`` silently keeps random weights).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet2_ext.checkpoint_io import assign_checked, checkpoint_names, iter_checkpoint, load_state_file
from espnet2_ext.speechllm.frontend import CHUNK_FRAMES, SILENCE_BELOW_MAX

# OpenAI Whisper names -> Hugging Face names, one dotted-path segment (or a run
# of segments) at a time; the final layer norms are renamed by full key below.
_OPENAI_TO_HF_SEGMENTS = {
    "blocks": "layers",
    "attn": "self_attn",
    "cross_attn": "encoder_attn",
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "out": "out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp_ln": "final_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "positional_embedding": "embed_positions.weight",
    "token_embedding": "embed_tokens",
}
_OPENAI_TO_HF_KEYS = {
    "encoder.ln_post.weight": "encoder.layer_norm.weight",
    "encoder.ln_post.bias": "encoder.layer_norm.bias",
    "decoder.ln.weight": "decoder.layer_norm.weight",
    "decoder.ln.bias": "decoder.layer_norm.bias",
}
# OpenAI ``dims`` -> WhisperConfig fields.
_OPENAI_DIMS_TO_HF = {
    "n_mels": "num_mel_bins",
    "n_vocab": "vocab_size",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_text_ctx": "max_target_positions",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}


def _segment_renamer(table: dict[str, str]):
    alternatives = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pattern = re.compile(rf"(?<![^.])(?:{alternatives})(?![^.])")
    return lambda name: pattern.sub(lambda m: table[m.group(0)], name)


_to_hf = _segment_renamer(_OPENAI_TO_HF_SEGMENTS)
_to_openai = _segment_renamer({v: k for k, v in _OPENAI_TO_HF_SEGMENTS.items()})
_HF_TO_OPENAI_KEYS = {v: k for k, v in _OPENAI_TO_HF_KEYS.items()}


def openai_whisper_name_to_hf(name: str) -> str:
    """``encoder.blocks.0.attn.query.weight`` -> ``encoder.layers.0.self_attn.q_proj.weight``."""
    return _OPENAI_TO_HF_KEYS.get(name) or _to_hf(name)


def hf_whisper_name_to_openai(name: str) -> str:
    """Inverse of :func:`openai_whisper_name_to_hf` (``WhisperModel`` names)."""
    return _HF_TO_OPENAI_KEYS.get(name) or _to_openai(name)


def openai_dims_to_config(dims: dict) -> WhisperConfig:
    """WhisperConfig for an OpenAI checkpoint's ``dims`` (FFN width is 4 x d_model there)."""
    missing = sorted(set(_OPENAI_DIMS_TO_HF) - set(dims))
    if missing:
        raise ValueError(f"OpenAI Whisper 'dims' lacks {missing}; got {sorted(dims)}")
    if dims["n_text_state"] != dims["n_audio_state"]:
        raise ValueError(f"n_text_state {dims['n_text_state']} != n_audio_state {dims['n_audio_state']}")
    fields = {hf: dims[oa] for oa, hf in _OPENAI_DIMS_TO_HF.items()}
    vocab = fields["vocab_size"]
    return WhisperConfig(
        **fields,
        encoder_ffn_dim=4 * fields["d_model"],
        decoder_ffn_dim=4 * fields["d_model"],
        pad_token_id=vocab - 1,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
        decoder_start_token_id=vocab - 1,
    )


def encoder_output_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the stride-2 conv: ``(L - 1) // 2 + 1``."""
    return (lengths - 1) // 2 + 1


class FrozenWhisperEncoder(WhisperEncoder):
    """Stock ``WhisperEncoder`` parameters with a length-aware forward; always frozen and in eval mode."""

    def __init__(self, config: WhisperConfig, pad_to_30s: bool = False) -> None:
        super().__init__(config)
        self.pad_to_30s = pad_to_30s
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenWhisperEncoder":
        """Stay in eval mode: the encoder is frozen (no dropout, no layer drop)."""
        return super().train(False)

    def output_size(self) -> int:
        return self.config.d_model

    def forward(
        self, feats: torch.Tensor, feats_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, n_mels), (B,) -> hidden states (B, T', d_model), their lengths (B,)."""
        if feats.dim() != 3 or feats.shape[2] != self.num_mel_bins or feats_lengths.shape != (feats.shape[0],):
            raise ValueError(
                f"expected feats (B, T, {self.num_mel_bins}) and lengths (B,), "
                f"got {tuple(feats.shape)} and {tuple(feats_lengths.shape)}"
            )
        lengths = feats_lengths.to(feats.device).clamp(max=feats.shape[1])
        if self.pad_to_30s:
            return self._forward_30s(feats, lengths)
        max_frames = 2 * self.max_source_positions
        if feats.shape[1] > max_frames:
            raise ValueError(
                f"{feats.shape[1]} frames exceed the encoder's {self.max_source_positions} positions "
                f"({max_frames} frames); use pad_to_30s to crop"
            )
        keep = _frame_mask(lengths, feats.shape[1])
        x = feats.transpose(1, 2) * keep[:, None, :].to(feats.dtype)
        x = torch.nn.functional.gelu(self.conv1(x)) * keep[:, None, :].to(feats.dtype)
        x = torch.nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        out_lengths = encoder_output_lengths(lengths)
        valid = _frame_mask(out_lengths, x.shape[1])
        key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        key_mask = key_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        return self._transformer(x, key_mask), out_lengths

    def _forward_30s(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's regime: 3000 frames, no mask; pads with the log-mel of digital silence."""
        frames = feats.shape[1]
        if frames < CHUNK_FRAMES:
            keep = _frame_mask(lengths, CHUNK_FRAMES)
            silence = _masked_max(feats, lengths) - SILENCE_BELOW_MAX
            padded = torch.nn.functional.pad(feats, (0, 0, 0, CHUNK_FRAMES - frames))
            feats = torch.where(keep[:, :, None], padded, silence[:, None, None])
        feats = feats[:, :CHUNK_FRAMES]
        x = torch.nn.functional.gelu(self.conv1(feats.transpose(1, 2)))
        x = torch.nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        out_lengths = encoder_output_lengths(lengths.clamp(max=CHUNK_FRAMES))
        hs = self._transformer(x, None)
        return hs[:, : int(out_lengths.max())], out_lengths

    def _transformer(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.embed_positions.weight[: x.shape[1]].to(x.dtype)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.layer_norm(x)


def _frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def _masked_max(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    keep = _frame_mask(lengths, feats.shape[1])[:, :, None]
    return feats.masked_fill(~keep, float("-inf")).amax(dim=(1, 2))


def _is_openai_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt"


def _read_openai(path: Path) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    checkpoint = load_state_file(path, mmap=True)
    if not {"dims", "model_state_dict"} <= set(checkpoint):
        found = sorted(checkpoint)
        raise ValueError(f"{path}: not an OpenAI Whisper checkpoint (needs 'dims' and 'model_state_dict'; got {found})")
    return openai_dims_to_config(checkpoint["dims"]), checkpoint["model_state_dict"]


def load_whisper_config(path: str | Path) -> WhisperConfig:
    """The WhisperConfig of a Hugging Face directory (no weights read) or of an OpenAI ``.pt``."""
    path = Path(path)
    if _is_openai_checkpoint(path):
        return _read_openai(path)[0]
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: neither an OpenAI Whisper .pt file nor a directory with config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "whisper":
        raise ValueError(f"{config_file}: model_type is {model_type!r}, expected 'whisper'")
    return WhisperConfig.from_pretrained(path)


def load_whisper_encoder(
    path: str | Path, pad_to_30s: bool = False, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> FrozenWhisperEncoder:
    """Frozen encoder from an HF Whisper directory (``WhisperModel`` or ``...ForConditionalGeneration``)
    or an OpenAI ``.pt``; ``decoder.*`` weights are ignored, anything else must match exactly.

    Built on the meta device; each tensor goes from its memory-mapped file to ``device`` in ``dtype``.
    """
    path = Path(path)
    if _is_openai_checkpoint(path):
        config, openai_state = _read_openai(path)
        prefix = "encoder."
        tensors = ((openai_whisper_name_to_hf(k), v) for k, v in openai_state.items())
        names = [openai_whisper_name_to_hf(k) for k in openai_state]
    else:
        config = load_whisper_config(path)
        names = checkpoint_names(path)
        prefix = "model.encoder." if any(k.startswith("model.encoder.") for k in names) else "encoder."
        tensors = iter_checkpoint(path)
    if not any(k.startswith(prefix) for k in names):
        raise ValueError(f"{path}: no encoder weights (no key starts with {prefix!r})")
    encoder_tensors = ((k[len(prefix) :], v) for k, v in tensors if k.startswith(prefix))
    with torch.device("meta"):
        encoder = FrozenWhisperEncoder(config, pad_to_30s=pad_to_30s)
    source = f"{path} (Whisper encoder, prefix {prefix!r})"
    assign_checked(encoder, encoder_tensors, source=source, dtype=dtype, device=device)
    return encoder.requires_grad_(False).eval()
