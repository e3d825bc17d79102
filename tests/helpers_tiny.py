"""Tiny tokenizer, LLM, checkpoints and synthetic utterances for the speech-LLM tests."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import torch
from transformers import DynamicCache, GlmForCausalLM

from espnet2_ext.speechllm.backbones import PrecomputedEncoder
from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector
from espnet2_ext.speechllm.espnet_model import LLMInputs, SpeechLLMModel
from espnet2_ext.speechllm.lora import configure_llm_finetuning
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer, train_sentencepiece
from espnet2_ext.upstream_formats import save_chatglm3_checkpoint, tiny_chatglm3_config

REPO = Path(__file__).resolve().parents[1]
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


@torch.no_grad()
def greedy_reference(
    model: SpeechLLMModel, batch: dict[str, torch.Tensor], max_new_tokens: int = 64, use_cache: bool = True
) -> list[list[int]]:
    """Greedy token ids per item (eos excluded), one step at a time: a reference for the batched/beam decoder."""
    speech_in = model.encode_speech(
        batch["speech"], batch["speech_lengths"], batch["speech_segments"], batch["speech_segments_lengths"],
        batch["num_history"],
    )
    prompt = batch["prompt"]
    inputs = model.build_inputs(speech_in, prompt, batch["prompt_lengths"])
    cache = DynamicCache(config=model.llm.config) if use_cache else None
    size = prompt.size(0)
    results: list[list[int]] = [[] for _ in range(size)]
    finished = torch.zeros(size, dtype=torch.bool, device=prompt.device)
    start = 0
    for _ in range(max_new_tokens):
        next_ids = model.decode_step(inputs, cache, start).argmax(-1)
        for b in (~finished).nonzero().flatten().tolist():
            if next_ids[b] != model.eos_id:
                results[b].append(int(next_ids[b]))
        finished |= next_ids == model.eos_id
        if bool(finished.all()):
            break
        start = inputs.inputs_embeds.size(1) if use_cache else 0
        inputs = LLMInputs(
            torch.cat([inputs.inputs_embeds, model.embed_tokens(next_ids)[:, None]], dim=1),
            torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(size, 1)], dim=1),
            torch.cat([inputs.position_ids, inputs.position_ids[:, -1:] + 1], dim=1),
            None,
            inputs.speech_memory,
        )
    return results


def train_tiny_experiment(tmp: Path, *extra: str, config: str = "tiny_decoder_only.yaml") -> dict:
    """One epoch of long_asr + cot_ner on the tiny set (``extra``: more training options): exp dir, data, LLM."""
    from espnet2_ext.bin.speechllm_train import main as train

    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(tmp)
    data = write_dataset(tmp / "data")
    llm_dir = save_tiny_chatglm3(tmp / "llm", tokenizer.vocab_size)
    exp = tmp / "exp"
    train([
        "--config", str(REPO / "conf/tuning" / config),
        "--llm_conf", f"path={llm_dir}", "--tokenizer_file", str(tmp / "spm.model"),
        "--preprocessor_conf", f"history_file={data['history']}",
        "--preprocessor_conf", "tasks={long_asr: 0.3, cot_ner: 0.7}",
        "--preprocessor_conf", "max_history=1",
        "--train_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data['text']},text,text",
        "--valid_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data['text']},text,text",
        "--train_shape_file", str(data["speech_shape"]), "--valid_shape_file", str(data["speech_shape"]),
        "--output_dir", str(exp), "--max_epoch", "1", "--ngpu", "0", *extra,
    ])
    return {"exp": exp, "data": data, "llm": llm_dir, "tokenizer": tokenizer}
