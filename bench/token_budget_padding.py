"""Padding of token-budget batches against ESPnet's folded batches, on a synthetic AISHELL-like corpus.

The corpus imitates AISHELL-1's training set in what batching sees: durations log-normal around
4.5 s (1.2-14.5 s) at 50 encoder frames/s, 3.2 characters/s, speakers reading in sequence (their
history lists), a third of the utterances with an entity in NER markup; the words are drawn from a
Zipf-distributed lexicon and tokenised by a sentencepiece model trained on the corpus (about 1.5
characters per token, near ChatGLM3's on Chinese). For each shipped phase config (its
``preprocessor_conf``, ``batch_bins`` and ``accum_grad``) the examples of epoch 1 are planned exactly
as in training, then batched (a) by the token budget and (b) by ``folded`` with 64 utterances
sorted by the current utterance's frames (the configs before the budget). Reported: the share of
computed tokens that are padding (decoder-only: one sequence; encoder-decoder: text and speech
memory padded separately), utterances per batch and per update, and the largest text share of a
budget batch (``plan_memory --max_text_fraction``). Writes ``bench/results/token_budget_padding.json``.

    python bench/token_budget_padding.py [--utts 12000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import kaldiio
import numpy as np
import yaml
from espnet2.samplers.folded_batch_sampler import FoldedBatchSampler

from espnet2_ext.samplers.token_budget import ExampleCoster, budget_batches, padding_fraction
from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [f"conf/tuning/train_decoder_only_phase{i}.yaml" for i in (1, 2, 3)]
FRAMES_PER_S = 50
CHARS_PER_S = 3.2
BRACKETS = ("[]", "()", "<>")


def synthetic_corpus(out: Path, utts: int, seed: int = 0) -> dict[str, Path]:
    """Kaldi-style files of an AISHELL-like corpus (features are 1-frame placeholders: only shapes matter)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    chars = [chr(0x4E00 + i) for i in rng.choice(20000, size=3000, replace=False)]
    lexicon = ["".join(rng.choice(chars, size=n)) for n in rng.choice([1, 2, 2, 2, 3, 4], size=6000)]
    zipf = 1.0 / np.arange(1, len(lexicon) + 1)
    zipf /= zipf.sum()
    speakers = max(1, utts // 350)
    texts, frames, history = {}, {}, {}
    for i in range(utts):
        spk, idx = i % speakers, i // speakers
        uid = f"S{spk:04d}W{idx:05d}"
        seconds = float(np.clip(rng.lognormal(np.log(4.3), 0.3), 1.2, 14.5))
        target = max(3, round(seconds * CHARS_PER_S + rng.normal(0, 1.5)))
        text = ""
        while len(text) < target:
            text += lexicon[rng.choice(len(lexicon), p=zipf)]
        text = text[:target]
        if rng.random() < 0.35 and len(text) >= 4:
            start, length = int(rng.integers(0, len(text) - 2)), int(rng.integers(2, 4))
            left, right = BRACKETS[rng.integers(3)]
            text = text[:start] + left + text[start : start + length] + right + text[start + length :]
        texts[uid], frames[uid] = text, round(seconds * FRAMES_PER_S)
        history[uid] = [f"S{spk:04d}W{j:05d}" for j in range(max(0, idx - 8), idx)]
    paths = {name: out / name for name in ("text", "history", "feats_shape", "feats.scp", "corpus.txt")}
    paths["text"].write_text("".join(f"{u} {t}\n" for u, t in texts.items()), encoding="utf-8")
    paths["history"].write_text("".join(" ".join([u, *h]) + "\n" for u, h in history.items()))
    paths["feats_shape"].write_text("".join(f"{u} {f},1280\n" for u, f in frames.items()))
    paths["corpus.txt"].write_text("\n".join(texts.values()) + "\n", encoding="utf-8")
    kaldiio.save_ark(str(out / "feats.ark"), {u: np.zeros((1, 4), np.float32) for u in texts}, scp=str(paths["feats.scp"]))
    symbols = [*TASK_TOKENS, "[", "]", "(", ")", "<", ">"]
    paths["spm"] = train_sentencepiece(paths["corpus.txt"], out / "spm", vocab_size=8000, user_defined_symbols=symbols)
    return paths


def encoder_decoder_padding(batches: list[list[str]], parts: dict[str, tuple[int, int]]) -> float:
    computed = sum(len(b) * (max(parts[u][0] for u in b) + max(parts[u][1] for u in b)) for b in batches)
    return 1.0 - sum(sum(parts[u]) for b in batches for u in b) / computed


def measure(config: str, paths: dict[str, Path]) -> dict:
    conf = yaml.safe_load((REPO / config).read_text())
    pre = SpeechLLMPreprocessor(
        train=True, tokenizer_file=str(paths["spm"]), feats_scp=str(paths["feats.scp"]), text_file=str(paths["text"]),
        history_file=str(paths["history"]), seed=conf.get("seed", 0), **conf["preprocessor_conf"],
    )
    frames = {line.split()[0]: int(line.split()[1].split(",")[0]) for line in paths["feats_shape"].read_text().splitlines()}
    coster = ExampleCoster(pre, frames, conf["connector_conf"]["stack"], lambda f: f)
    parts = {uid: coster.parts(uid, 1) for uid in frames}
    costs = {uid: sum(p) for uid, p in parts.items()}
    budget = budget_batches(costs, conf["batch_bins"])
    folded = [list(b) for b in FoldedBatchSampler(64, [str(paths["feats_shape"])], [1500])]
    sizes = [len(b) for b in budget]
    text_share = [sum(parts[u][1] for u in b) / sum(costs[u] for u in b) for b in budget]
    return {
        "batch_bins": conf["batch_bins"], "accum_grad": conf["accum_grad"],
        "mean_example_tokens": round(float(np.mean(list(costs.values()))), 1),
        "token_budget": {
            "padding_fraction": round(padding_fraction(budget, costs), 4),
            "padding_fraction_encoder_decoder": round(encoder_decoder_padding(budget, parts), 4),
            "utterances_per_batch": round(float(np.mean(sizes)), 2),
            "utterances_per_update_1gpu": round(float(np.mean(sizes)) * conf["accum_grad"], 1),
            "max_text_fraction": round(max(text_share), 3),
            "batches": len(budget),
        },
        "folded_64": {
            "padding_fraction": round(padding_fraction(folded, costs), 4),
            "padding_fraction_encoder_decoder": round(encoder_decoder_padding(folded, parts), 4),
            "max_batch_tokens": max(len(b) * max(costs[u] for u in b) for b in folded),
            "batches": len(folded),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=12000)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/token_budget_padding.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_corpus(Path(tmp), args.utts)
        result = {"utterances": args.utts, **{config: measure(config, paths) for config in args.configs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
