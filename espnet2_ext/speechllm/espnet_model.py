"""The speech-LLM as an ESPnet2 model: frozen encoder -> connector -> ChatGLM3 (GlmForCausalLM).

Input layout per item (left-padded, so batched generation can append tokens on the right):

* decoder-only (adapter):    ``prefix ([gMASK] sop)  S_{i-k} … γ S_i  prompt (|asr|)  target``
* encoder-decoder (XATT):    ``prefix  prompt  target``, speech through every layer's cross-attention

``prompt`` and ``target`` come from the preprocessor; the loss is on the target tokens only
(the lm_head runs on those positions alone, which spares a (B, T, 65024) logits tensor).

Checkpoints hold only the trainable parameters (connector, γ, gates, LoRA; the whole LLM in
``full`` mode): :meth:`state_dict` drops the frozen Whisper and base-LLM weights, which are
reloaded from their own checkpoints when the model is built. :meth:`load_state_dict` insists on
every trainable key with the right shape and tolerates absent frozen ones, so ESPnet's resume,
``--init_param`` and model averaging work on these small files.

Precision (:mod:`precision`): frozen weights stay in the dtype they were loaded in, trainable ones
in fp32 (:meth:`to` casts trainable parameters only), and ``forward``, :meth:`encode_speech` and
:meth:`decode_step` run under autocast to ``compute_dtype``. ``activation_checkpointing``
recomputes each LLM layer (self-attention, the cross-attention block inserted after it, FFN) in
the backward pass instead of keeping its activations (non-reentrant, so LoRA weights and the
speech keys/values passed as keywords get their gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, GlmForCausalLM

from espnet2_ext.speechllm.connectors import CrossAttentionConnector, SpeechConnector, SpeechMemory
from espnet2_ext.speechllm.precision import autocast_to, to_keeping_frozen_dtype

IGNORE_ID = -100
LOSS_CHUNK = 1024  # scored positions per lm_head chunk under activation checkpointing


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    return nn.functional.cross_entropy(logits, targets, reduction="sum"), (logits.argmax(-1) == targets).sum()


@dataclass
class SpeechInputs:
    """Connector output for a batch: speech tokens S (B, L, W) with lengths (B,); XATT memory if any."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    memory: SpeechMemory | None


@dataclass
class LLMInputs:
    """Left-padded LLM input: embeddings (B, T, W), attention mask and positions (B, T), labels (B, T)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    speech_memory: SpeechMemory | None


class SpeechLLMModel(AbsESPnetModel):
    """Whisper (or cached encoder output) + connector + ChatGLM3, trained on target tokens."""

    def __init__(
        self,
        encoder: nn.Module,
        connector: SpeechConnector,
        llm: GlmForCausalLM,
        prefix_ids: Sequence[int],
        eos_id: int,
        compute_dtype: torch.dtype = torch.float32,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm
        if isinstance(connector, CrossAttentionConnector):
            connector.attach(llm)
        if activation_checkpointing:
            llm.activation_checkpointing_enable({"use_reentrant": False})
        self.register_buffer("prefix_ids", torch.tensor(list(prefix_ids), dtype=torch.long), persistent=False)
        self.eos_id = eos_id
        self.compute_dtype = compute_dtype

    def to(self, *args, **kwargs) -> "SpeechLLMModel":
        """Move the model; a dtype (ESPnet's ``train_dtype``) applies to the trainable parameters only."""
        return to_keeping_frozen_dtype(self, *args, **kwargs)

    def _autocast(self, like: torch.Tensor):
        return autocast_to(self.compute_dtype, like.device.type)

    @property
    def uses_cross_attention(self) -> bool:
        return isinstance(self.connector, CrossAttentionConnector)

    # ------------------------------------------------------------------ inputs
    def encode_speech(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        speech_segments: torch.Tensor,
        speech_segments_lengths: torch.Tensor,
        num_history: torch.Tensor,
    ) -> SpeechInputs:
        """Encoder -> per-segment stacking -> connector (γ before the current segment if history)."""
        with self._autocast(speech):
            return self._encode_speech(speech, speech_lengths, speech_segments, speech_segments_lengths, num_history)

    def _encode_speech(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        speech_segments: torch.Tensor,
        speech_segments_lengths: torch.Tensor,
        num_history: torch.Tensor,
    ) -> SpeechInputs:
        frames, _ = self.encoder(speech, speech_lengths)
        boundaries = self.encoder.output_lengths(torch.cumsum(speech_segments, dim=1))
        segments = torch.diff(boundaries, dim=1, prepend=torch.zeros_like(boundaries[:, :1]))
        tokens, lengths = self.connector(
            frames.to(self.connector.gamma.dtype), segments, speech_segments_lengths, num_history.view(-1)
        )
        memory = self.connector.memory(tokens, lengths) if self.uses_cross_attention else None
        return SpeechInputs(tokens, lengths, memory)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def build_inputs(
        self,
        speech: SpeechInputs,
        prompt: torch.Tensor,
        prompt_lengths: torch.Tensor,
        text: torch.Tensor | None = None,
        text_lengths: torch.Tensor | None = None,
    ) -> LLMInputs:
        """Assemble ``prefix [S] prompt [target]`` per item, left-padded; labels only when ``text`` is given."""
        prefix = self.embed_tokens(self.prefix_ids)
        prompts = self.embed_tokens(prompt.clamp(min=0))
        targets = self.embed_tokens(text.clamp(min=0)) if text is not None else None
        rows: list[torch.Tensor] = []
        label_rows: list[torch.Tensor] = []
        for b in range(prompt.size(0)):
            pieces = [prefix]
            if not self.uses_cross_attention:
                pieces.append(speech.tokens[b, : speech.lengths[b]].to(prefix.dtype))
            pieces.append(prompts[b, : prompt_lengths[b]])
            context = sum(p.size(0) for p in pieces)
            labels = torch.full((context,), IGNORE_ID, dtype=torch.long, device=prefix.device)
            if targets is not None:
                pieces.append(targets[b, : text_lengths[b]])
                labels = torch.cat([labels, text[b, : text_lengths[b]]])
            rows.append(torch.cat(pieces))
            label_rows.append(labels)
        length = max(r.size(0) for r in rows)
        embeds = prefix.new_zeros(len(rows), length, prefix.size(-1))
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=prefix.device)
        padded_labels = torch.full((len(rows), length), IGNORE_ID, dtype=torch.long, device=prefix.device)
        for b, (row, labels) in enumerate(zip(rows, label_rows)):
            embeds[b, length - row.size(0) :] = row
            mask[b, length - row.size(0) :] = 1
            padded_labels[b, length - row.size(0) :] = labels
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return LLMInputs(embeds, mask, positions, padded_labels if text is not None else None, speech.memory)

    def _llm_kwargs(self, memory: SpeechMemory | None) -> dict:
        return {"speech_memory": memory} if memory is not None else {}

    # ---------------------------------------------------------------- training
    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        speech_segments: torch.Tensor,
        speech_segments_lengths: torch.Tensor,
        num_history: torch.Tensor,
        prompt: torch.Tensor,
        prompt_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Cross-entropy of the target tokens; stats ``loss`` and ``acc`` (token accuracy)."""
        with self._autocast(speech):
            speech_in = self._encode_speech(
                speech, speech_lengths, speech_segments, speech_segments_lengths, num_history
            )
            inputs = self.build_inputs(speech_in, prompt, prompt_lengths, text, text_lengths)
            hidden = self.llm.model(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
                **self._llm_kwargs(inputs.speech_memory),
            ).last_hidden_state
            labels = inputs.labels[:, 1:]
            scored = labels != IGNORE_ID
            loss_sum, correct = self._target_loss(hidden[:, :-1][scored], labels[scored])
        count = scored.sum()
        loss, acc = loss_sum / count, correct.float() / count
        # a copy: ESPnet's Trainer divides `loss` by accum_grad in place, which would scale the logged value
        stats = {"loss": loss.detach().clone(), "acc": acc.detach()}
        return force_gatherable((loss, stats, torch.tensor([speech.size(0)])), loss.device)

    def _target_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy and correct count of the scored positions (N, W) -> lm_head -> (N, vocab).

        Under activation checkpointing the head runs in chunks of ``LOSS_CHUNK`` positions, each
        recomputed in the backward pass, so the fp32 logits of a large batch (N × 65024 × 4 bytes,
        plus softmax and gradient) never exist all at once.
        """
        checkpointed = self.llm.model.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if not checkpointed:
            return _chunk_loss(self.llm.lm_head, hidden, targets)
        parts = [
            checkpoint(_chunk_loss, self.llm.lm_head, h, t, use_reentrant=False)
            for h, t in zip(hidden.split(LOSS_CHUNK), targets.split(LOSS_CHUNK))
        ]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def collect_feats(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs
    ) -> dict[str, torch.Tensor]:
        """The input features as they are (no normalisation statistics are needed)."""
        return {"feats": speech, "feats_lengths": speech_lengths}

    # ---------------------------------------------------------------- decoding
    def decode_step(
        self, inputs: LLMInputs, cache: DynamicCache | None, start: int = 0
    ) -> torch.Tensor:
        """Last-position fp32 logits (B, V) for ``inputs`` from position ``start`` on (the rest is in ``cache``)."""
        with self._autocast(inputs.inputs_embeds):
            out = self.llm(
                inputs_embeds=inputs.inputs_embeds[:, start:],
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids[:, start:],
                cache=cache,
                use_cache=cache is not None,
                logits_to_keep=1,
                **self._llm_kwargs(inputs.speech_memory),
            )
        return out.logits[:, -1].float()

    # ------------------------------------------------------------- checkpoints
    def trainable_parameter_names(self) -> list[str]:
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the trainable parameters (the frozen encoder and base LLM come from their own checkpoints)."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + name for name in self.trainable_parameter_names()}
        for key in [k for k in state if k not in keep]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a trainable-only (or full) state; every trainable key must be present with its shape."""
        params = dict(self.named_parameters())
        missing = [name for name in self.trainable_parameter_names() if name not in state_dict]
        if missing:
            raise RuntimeError(
                f"checkpoint lacks {len(missing)} trainable parameter(s) of this model, e.g. {missing[:5]}; "
                "was it written with another connector, LLM or llm_finetune mode?"
            )
        known = set(super().state_dict(keep_vars=True))
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(params[k].shape)}"
            for k, v in state_dict.items()
            if k in params and v.shape != params[k].shape
        ]
        if mismatched:
            raise RuntimeError(f"checkpoint shapes differ from the model: {mismatched[:5]}")
        unexpected = [k for k in state_dict if k not in known]
        if unexpected and strict:
            raise RuntimeError(f"checkpoint has {len(unexpected)} key(s) unknown to this model, e.g. {unexpected[:5]}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k in known}, strict=False, assign=assign)
        return _IncompatibleKeys([], unexpected)
