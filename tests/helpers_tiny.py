"""Tiny tokenizer, LLM, checkpoints and synthetic utterances for the speech-LLM tests."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import torch
from transformers import GlmForCausalLM

from espnet2_ext.speechllm.backbones import PrecomputedEncoder
from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.speechllm.lora import configure_llm_finetuning
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer, train_sentencepiece
from espnet2_ext.upstream_formats import save_chatglm3_checkpoint, tiny_chatglm3_config

ENC_DIM = 8
# Four synthetic "utterances" (AISHELL-NER style markup); uttids sort by speaker and time.
TEXTS = {
    "spk1_u1": "[张三]去了(北京)",
    "spk1_u2": "他在<清华大学>读书",
    "spk2_u1": "今天天气很好",
    "spk2_u2": "(上海)下雨了",
}
HISTORY = {"spk1_u1": [], "spk1_u2": ["spk1_u1"], "spk2_u1": [], "spk2_u2": ["spk2_u1"]}


def make_tokenizer(directory: Path) -> ChatGLM3Tokenizer:
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(list(TEXTS.values()) * 3) + "\n", encoding="utf-8")
    symbols = [*TASK_TOKENS, "[", "]", "(", ")", "<", ">"]
    model = train_sentencepiece(corpus, directory / "spm", vocab_size=60, user_defined_symbols=symbols)
    return ChatGLM3Tokenizer(model)


def tiny_llm_config(vocab_size: int, hidden: int = 32, layers: int = 2) -> dict:
    return tiny_chatglm3_config(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=4, kv_groups=2, ffn=64)


def make_llm(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0) -> GlmForCausalLM:
    torch.manual_seed(seed)
    return GlmForCausalLM(chatglm3_config_to_glm(tiny_llm_config(vocab_size, hidden, layers))).eval()


def save_tiny_chatglm3(directory: Path, vocab_size: int, seed: int = 0) -> Path:
    return save_chatglm3_checkpoint(make_llm(vocab_size, seed=seed), tiny_llm_config(vocab_size), directory)


def make_model(
    arch: str, tokenizer: ChatGLM3Tokenizer, llm_finetune: str = "full", gate_init: float = 0.0, seed: int = 0
) -> SpeechLLMModel:
    """A tiny model on cached 'encoder outputs' of ENC_DIM dims, stacking 2 frames."""
    llm = make_llm(tokenizer.vocab_size, seed=seed)
    torch.manual_seed(seed + 1)
    if arch == "adapter":
        connector = AdapterConnector.build(ENC_DIM, llm.config, stack=2, hidden_size=64)
    else:
        connector = CrossAttentionConnector.build(
            ENC_DIM, llm.config, stack=2, attention_dim=16, num_heads=2, gate_init=gate_init
        )
    configure_llm_finetuning(llm, llm_finetune)
    return SpeechLLMModel(PrecomputedEncoder(ENC_DIM), connector, llm, tokenizer.prefix_ids, tokenizer.eos_id)


def make_features(seed: int = 0) -> dict[str, np.ndarray]:
    """Random 'encoder outputs', 5-9 frames per utterance."""
    rng = np.random.default_rng(seed)
    return {uid: rng.standard_normal((5 + i, ENC_DIM)).astype(np.float32) for i, uid in enumerate(TEXTS)}


def write_dataset(directory: Path, seed: int = 0) -> dict[str, Path]:
    """feats.scp/ark, text, history and speech/text shape files of the tiny data set."""
    directory.mkdir(parents=True, exist_ok=True)
    feats = make_features(seed)
    paths = {name: directory / name for name in ("feats.scp", "text", "history", "speech_shape", "text_shape")}
    kaldiio.save_ark(str(directory / "feats.ark"), feats, scp=str(paths["feats.scp"]))
    paths["text"].write_text("".join(f"{u} {t}\n" for u, t in TEXTS.items()), encoding="utf-8")
    paths["history"].write_text("".join(f"{u} {' '.join(h)}\n".replace(" \n", "\n") for u, h in HISTORY.items()))
    paths["speech_shape"].write_text("".join(f"{u} {f.shape[0]},{f.shape[1]}\n" for u, f in feats.items()))
    paths["text_shape"].write_text("".join(f"{u} {len(t)}\n" for u, t in TEXTS.items()))
    return paths


def collate(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The task's collate function applied to preprocessed examples."""
    from espnet2.train.collate_fn import CommonCollateFn

    fn = CommonCollateFn(float_pad_value=0.0, int_pad_value=0, not_sequence=["num_history"])
    _, batch = fn([(f"utt{i}", ex) for i, ex in enumerate(examples)])
    return batch


def tiny_cot_ner_batch(directory: Path) -> tuple[ChatGLM3Tokenizer, dict[str, torch.Tensor]]:
    """The tiny data set as one evaluation batch in CoT-NER format with one history utterance."""
    from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor

    tokenizer = make_tokenizer(directory)
    paths = write_dataset(directory / "data")
    pre = SpeechLLMPreprocessor(
        train=False, tokenizer_file=str(directory / "spm.model"), feats_scp=str(paths["feats.scp"]),
        text_file=str(paths["text"]), history_file=str(paths["history"]), eval_task="cot_ner", eval_history=1,
    )
    feats = kaldiio.load_scp(str(paths["feats.scp"]))
    return tokenizer, collate([pre(uid, {"speech": feats[uid], "text": TEXTS[uid]}) for uid in TEXTS])
