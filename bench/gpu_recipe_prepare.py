"""Inputs of ``bench/gpu_recipe.sh``: random upstream-format checkpoints, a mini corpus, its stage-1 and -3 outputs.

Everything the four training runs read is made here, under ``--work``, by the recipe's own code
where the recipe has a stage for it:

* ``corpus/``: mini-corpus sentences (``make_corpus.compose_corpus``: AISHELL-NER markup, speakers
  reading stories) in the AISHELL-1 / AISHELL-NER release layout, each wav white noise of an
  AISHELL-like duration (3.2 characters a second, as AISHELL-1 reads, with a spread);
* ``data/{train,dev}``: stage 1 (``prepare_aishell_ner``): Kaldi dirs with ``history``;
* ``chatglm3-6b/``: ChatGLM3 as THUDM publishes it (``config.json`` of ``conf/model_configs/chatglm3-6b``,
  ChatGLM3 tensor names, ``pytorch_model-0000k-of-0000n.bin`` shards + index, ``tokenizer.model``)
  with random weights stored in bf16 (``frozen_dtype: bfloat16`` refuses an fp16/fp32 checkpoint), and
  a sentencepiece tokenizer trained on the corpus in ChatGLM3's layout, with its special tokens;
* ``whisper-large-v2/``: a Hugging Face Whisper directory (``save_pretrained``) of
  ``conf/model_configs/whisper-large-v2``, random bf16 weights;
* ``dump/{train,dev}``: stage 3 (``dump_feats --encoder_out --pad_to_30s true``): that Whisper's
  encoder outputs (1280 wide), float16, with ``feats_shape``;
* ``runs.tsv`` and ``exp/<run>/train_args``: for each shipped full-size config (decoder-only and
  encoder-decoder, phases 1 and 3), the training arguments (paths, and a ``max_epoch`` chosen with
  the token-budget sampler so that the run takes about ``--iterations`` batches).

``--tiny``: the same on the CPU with a 2-layer ChatGLM3 and Whisper (fp32, so ``frozen_dtype float32``)
and the connectors and LoRA shrunk on the command line; the configs are otherwise the shipped ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch
from transformers import GlmForCausalLM, WhisperConfig, WhisperForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs/mini_aishell_ner/llm1/local"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_full_size import default_dtype  # noqa: E402
from make_corpus import compose_corpus, wav_path, write_transcripts  # noqa: E402
from token_schedule import RunSchedule  # noqa: E402

from espnet2_ext.bin import dump_feats, prepare_aishell_ner  # noqa: E402
from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm, glm_state_dict_to_chatglm3  # noqa: E402
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer, train_sentencepiece  # noqa: E402
from espnet2_ext.text.ner_markup import BRACKETS  # noqa: E402
from espnet2_ext.upstream_formats import (  # noqa: E402
    save_chatglm3_checkpoint,
    tiny_chatglm3_config,
    tiny_whisper_config,
)

# Both architectures first: should time run out, phase 3 is what goes.
RUNS = ("decoder_only_phase1", "encoder_decoder_phase1", "decoder_only_phase3", "encoder_decoder_phase3")
SAMPLE_RATE = 16000
CHARS_PER_SECOND = (3.2, 0.4)  # AISHELL-1: ~14.5 characters in ~4.5 s; mean and spread
SHARD_BYTES = 2 * 1024**3  # ChatGLM3-6B ships 7 shards of ~1.8 GB
TINY_SHARD_BYTES = 200_000  # the tiny LLM in 3 shards, so sharded reading is exercised too
INIT_STD = 0.02
TINY_ENCODER_DIM = 16
TINY_OVERRIDES = {  # model sizes, fp32 frozen weights (as the tiny LLM is stored), no loader workers
    "common": ["--frozen_dtype", "float32", "--encoder_conf", f"output_size={TINY_ENCODER_DIM}",
               "--lora_conf", "r=4", "--lora_conf", "lora_alpha=8", "--num_workers", "0"],
    "decoder_only": ["--connector_conf", "hidden_size=64"],
    "encoder_decoder": ["--connector_conf", "attention_dim=32", "--connector_conf", "num_heads=4"],
}  # fmt: skip

log = logging.getLogger("gpu_recipe_prepare")


def write_corpus(out: Path, train_utts: int, dev_utts: int, speakers: int, seed: int) -> list[str]:
    """The mini corpus's sentences over noise wavs, in the AISHELL release layout; returns the marked-up texts."""
    dev_speakers = max(1, speakers // 10)
    utterances = compose_corpus({"train": train_utts, "dev": dev_utts, "test": 1},
                                {"train": speakers, "dev": dev_speakers, "test": 1}, seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    for utt in utterances:
        seconds = len(utt.plain) / max(rng.normal(*CHARS_PER_SECOND), 2.0)
        samples = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 1000).astype("<i2")
        path = wav_path(out, utt)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SAMPLE_RATE)
            handle.writeframes(samples.tobytes())
    write_transcripts(out, utterances)
    return [utt.marked for utt in utterances]


def train_tokenizer(texts: list[str], work: Path) -> Path:
    """A sentencepiece model in ChatGLM3's layout (unk 0, bos 1, eos 2; 9 specials after it), markup as pieces."""
    corpus = work / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    symbols = [*TASK_TOKENS, *(c for pair in BRACKETS.values() for c in pair)]
    return train_sentencepiece(corpus, work / "tokenizer", vocab_size=4000, user_defined_symbols=symbols)


def random_glm_state(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """GlmForCausalLM's tensors for ``cfg``: N(0, 0.02) matrices, unit RMSNorm weights, zero biases."""
    config = chatglm3_config_to_glm(cfg)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GlmForCausalLM(config).state_dict().items()}
    generator = torch.Generator(device).manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape, device=device, dtype=dtype)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(shape, device=device, dtype=dtype)
        else:
            state[name] = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(INIT_STD)
    return state


def write_chatglm3(
    cfg: dict, out: Path, tokenizer: Path, device: torch.device, dtype: torch.dtype, seed: int, shard_bytes: int
) -> None:
    """Random weights drawn on ``device``, converted to ChatGLM3 names, written as sharded ``pytorch_model`` files."""
    state = glm_state_dict_to_chatglm3(random_glm_state(cfg, device, dtype, seed), cfg)
    state = {name: state[name].cpu() for name in list(state)}
    cfg = {**cfg, "torch_dtype": str(dtype).removeprefix("torch.")}
    save_chatglm3_checkpoint(state, cfg, out, shard_size=shard_bytes, tokenizer_model=tokenizer)


def write_whisper(config: WhisperConfig, out: Path, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """A random Whisper (encoder and decoder, as published) built on ``device`` in ``dtype``, ``save_pretrained``."""
    torch.manual_seed(seed)
    config.dtype = dtype
    with torch.device(device), default_dtype(dtype):
        model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(out)


def dump_encoder_outputs(work: Path, whisper: Path, split: str, device: str) -> None:
    """Stage 3 for one split: the frozen encoder's outputs on 30-s windows, float16."""
    code = dump_feats.main([
        "--wav_scp", str(work / "data" / split / "wav.scp"), "--out_dir", str(work / "dump" / split),
        "--whisper", str(whisper), "--encoder_out", "--pad_to_30s", "true", "--device", device,
        "--batch_size", "32", "--dump_dtype", "float16", "--strict",
    ])  # fmt: skip
    if code:
        raise SystemExit(f"dump_feats failed for {split}: see {work / 'dump' / split / 'bad_utts'}")


def training_args(run: str, work: Path, device: str, tiny: bool) -> list[str]:
    """The arguments llm.sh's stages 5 and 7 give the training entry point, for this work dir (no max_epoch yet)."""
    arch = run.rsplit("_", 1)[0]
    llm = work / "chatglm3-6b"
    args = [
        "--config", str(REPO / f"conf/tuning/train_{run}.yaml"), "--ngpu", "1" if device == "cuda" else "0",
        "--output_dir", str(work / "exp" / run),
        "--llm_conf", f"path={llm}", "--tokenizer_file", str(llm / "tokenizer.model"),
        "--train_data_path_and_name_and_type", f"{work}/dump/train/feats.scp,speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{work}/data/train/text,text,text",
        "--valid_data_path_and_name_and_type", f"{work}/dump/dev/feats.scp,speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{work}/data/dev/text,text,text",
        "--train_shape_file", f"{work}/dump/train/feats_shape", "--valid_shape_file", f"{work}/dump/dev/feats_shape",
    ]  # fmt: skip
    if tiny:
        args += TINY_OVERRIDES["common"] + TINY_OVERRIDES[arch]
    return args


def plan_runs(work: Path, device: str, tiny: bool, iterations: int) -> list[dict]:
    """Each run's arguments, with the epochs (and a log interval) that give about ``iterations`` batches."""
    runs = []
    for run in RUNS:
        args = training_args(run, work, device, tiny)
        schedule = RunSchedule(args)
        per_epoch = len(schedule.batches(1))
        epochs = max(1, round(iterations / per_epoch))
        accum = schedule.args.accum_grad
        interval = accum * max(1, round(per_epoch * epochs / (6 * accum)))  # whole updates, ~6 lines per run
        args += ["--max_epoch", str(epochs), "--log_interval", str(interval)]
        exp = work / "exp" / run
        exp.mkdir(parents=True, exist_ok=True)
        (exp / "train_args").write_text("".join(f"{a}\n" for a in args), encoding="utf-8")
        runs.append({"run": run, "epochs": epochs, "batches_epoch1": per_epoch, "log_interval": interval})
        log.info("%s: %d batches in epoch 1 -> max_epoch %d", run, per_epoch, epochs)
    (work / "runs.tsv").write_text("".join(f"{r['run']}\t{work / 'exp' / r['run']}\n" for r in runs))
    return runs


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="empty directory for everything written")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--train_utts", type=int, default=800)
    parser.add_argument("--dev_utts", type=int, default=40)
    parser.add_argument("--speakers", type=int, default=40, help="training speakers (history chains)")
    parser.add_argument("--iterations", type=int, default=100, help="batches per training run, about")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_recipe_prepare.py: no CUDA GPU visible (torch.cuda.is_available() is False); use --tiny")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    work = args.work
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        timings[name] = round(time.perf_counter() - started, 1)
        log.info("%s: %.1f s", name, timings[name])
        started = time.perf_counter()

    texts = write_corpus(work / "corpus", args.train_utts, args.dev_utts, args.speakers, args.seed)
    code = prepare_aishell_ner.main([
        "--aishell_dir", str(work / "corpus/data_aishell"), "--ner_dir", str(work / "corpus/aishell_ner"),
        "--out", str(work / "data"), "--splits", "train", "dev",
    ])  # fmt: skip
    if code:
        raise SystemExit(f"prepare_aishell_ner failed ({code})")
    tokenizer = train_tokenizer(texts, work)
    lap("corpus_and_tokenizer_s")

    llm_cfg = json.loads((REPO / "conf/model_configs/chatglm3-6b/config.json").read_text())
    if args.tiny:
        vocab = math.ceil(ChatGLM3Tokenizer(tokenizer).vocab_size / 8) * 8
        llm_cfg = tiny_chatglm3_config(vocab_size=vocab, hidden=64, layers=2, heads=4, kv_groups=2, ffn=128)
    shard_bytes = TINY_SHARD_BYTES if args.tiny else SHARD_BYTES
    write_chatglm3(llm_cfg, work / "chatglm3-6b", tokenizer, torch.device(device), dtype, args.seed, shard_bytes)
    lap("write_chatglm3_s")

    if args.tiny:
        whisper_cfg = tiny_whisper_config(d_model=TINY_ENCODER_DIM)
    else:
        whisper_cfg = WhisperConfig.from_pretrained(REPO / "conf/model_configs/whisper-large-v2")
    write_whisper(whisper_cfg, work / "whisper-large-v2", torch.device(device), dtype, args.seed)
    lap("write_whisper_s")
    if device == "cuda":
        torch.cuda.empty_cache()
    for split in ("train", "dev"):
        dump_encoder_outputs(work, work / "whisper-large-v2", split, device)
    lap("dump_encoder_outputs_s")

    runs = plan_runs(work, device, args.tiny, args.iterations)
    lap("plan_runs_s")
    summary = {"train_utterances": args.train_utts, "dev_utterances": args.dev_utts, "speakers": args.speakers,
               "target_iterations": args.iterations, "runs": runs, "timings": timings}  # fmt: skip
    (work / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
