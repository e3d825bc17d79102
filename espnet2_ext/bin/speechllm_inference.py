"""Decode with a trained speech-LLM, in the style of ESPnet's asr_inference (one job of the recipe's stage 8).

    python -m espnet2_ext.bin.speechllm_inference --model_dir exp/decoder_only/phase3 \\
        --model_file valid.acc.ave.pth --llm_conf path=CHATGLM3_DIR [--encoder_conf path=WHISPER] \\
        --data_path_and_name_and_type dump/enc/test/feats.scp,speech,kaldi_ark \\
        --history_file data/test/history --key_file split/keys.1 --task ner --history 2 \\
        --batch_size 16 --ngpu 0 --output_dir out/output.1 [--beam_size 4 --length_penalty 0.5]

The model is built from ``model_dir/config.yaml`` (ESPnet's training config; ``--encoder_conf`` and
``--llm_conf`` override its checkpoint paths; ``--encoder_conf path=`` only applies to a model on
log-mel input, ``encoder: whisper``) and loads ``model_dir/model_file``. ``--ngpu 1`` decodes on the
job's GPU (an error when the job sees none), with the LLM read straight into ``--dtype`` (``auto``:
bfloat16 on a GPU, float32 on the CPU) and LoRA merged into it (``--merge_lora``).

The features are what the model was trained on (cached encoder outputs or log-mel), stored as
float16 or float32 (one dtype per dump; a mix is refused). Their ``feats_conf.json`` (written by
``bin/dump_feats.py``) is compared with the one next to the model's training features: features
made otherwise (``pad_to_30s``, input type, mel bins, sample rate) are refused, since the model
would decode input unlike anything it was trained on.

Short-form (``--history 0``) decodes the utterances sorted by length, longest first, in batches of
``--batch_size``; the outputs keep the key-file order. Long-form (``--history K``) decodes
each speaker's utterances in order: utterance i gets the audio of its K previous utterances (whole
ones that fit ``max_input_seconds``, nearest first, as in training) and the model's OWN plain
hypotheses of them as forced history text. Utterances are decoded in waves, wave i holding the
i-th utterance of every speaker, so long-form is batched across speakers. The previous utterances
come from ``--history_file`` (``uttid prev_1 … prev_n``, most recent last) and must be among the
keys (the recipe splits jobs by speaker). A wave is sorted by length and batched as above, so
long-form batches hold at most one utterance per speaker of the job. A progress line (done/total,
utterances/s, ETA) is logged every ``--log_every`` utterances.

Outputs in ``--output_dir`` (``uttid value`` lines, key-file order): ``text`` (the current
utterance, with entity markup for ``--task ner``), ``text.plain`` (markup-free), ``token_scores``
(``uttid score lp_1 … lp_n``: the hypothesis score and each generated token's log-probability),
``raw`` (the whole output: forced history, markers, answer), ``malformed`` (``uttid reason``
for every repaired or suspicious output; see :mod:`espnet2_ext.api`) and ``history_cut`` (``uttid N of K``
for every utterance decoded with fewer of its K previous utterances than asked, because they did not fit
``max_input_seconds`` with it; the count is logged).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str2triple_str

from espnet2_ext.api import TASKS, Decoded, Speech2TextNER
from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.devices import DTYPE_CHOICES, device_for_ngpu, resolve_dtype
from espnet2_ext.errors import UserError
from espnet2_ext.feats_io import open_features
from espnet2_ext.speechllm.backbones import WhisperSpeechEncoder
from espnet2_ext.speechllm.decoding import DecodingOptions
from espnet2_ext.speechllm.search_rules import CACHES, COMPILE_MODES
from espnet2_ext.speechllm.input_settings import mismatched_settings, read_feature_settings, settings_file
from espnet2_ext.text.kaldi_text import read_history_file, read_keys


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, required=True, help="training output dir with config.yaml")
    parser.add_argument("--model_file", default="valid.acc.ave.pth", help="checkpoint (relative to --model_dir)")
    parser.add_argument("--encoder_conf", action=NestedDictAction, default=dict(), help="encoder_conf overrides")
    parser.add_argument("--llm_conf", action=NestedDictAction, default=dict(), help="llm_conf overrides (path=DIR)")
    parser.add_argument("--tokenizer_file", help="override the config's tokenizer_file")
    parser.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append", required=True,
                        help="FEATS_SCP,speech,kaldi_ark")
    parser.add_argument("--history_file", type=Path, help="'uttid prev_1 … prev_n' lines (needed for --history > 0)")
    parser.add_argument("--key_file", type=Path, help="utterance ids to decode (first field); default: all")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--history", type=int, default=0, help="previous utterances per input (0: short-form)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: the job's GPU (an error when there is none)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="model dtype (auto: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--merge_lora", type=str2bool, default=True, help="merge LoRA into the base LLM (faster)")
    parser.add_argument("--log_every", type=int, default=100, help="a progress line every N utterances")
    parser.add_argument("--output_dir", type=Path, required=True)
    defaults = DecodingOptions()
    parser.add_argument("--beam_size", type=int, default=defaults.beam_size)
    parser.add_argument("--length_penalty", type=float, default=defaults.length_penalty,
                        help="ended beams are scored logprob_sum / length ** length_penalty")
    parser.add_argument("--maxlenratio", type=float, default=defaults.maxlenratio,
                        help="max new tokens = min(maxlen_cap, maxlenratio * encoder frames + maxlen_const)")
    parser.add_argument("--maxlen_const", type=int, default=defaults.maxlen_const)
    parser.add_argument("--maxlen_cap", type=int, default=defaults.maxlen_cap)
    parser.add_argument("--repeat_ngram", type=int, default=defaults.repeat_ngram,
                        help="repetition guard: longest n-gram checked")
    parser.add_argument("--repeat_times", type=int, default=defaults.repeat_times,
                        help="repetition guard: a hypothesis ends when its tail repeats an n-gram this often")
    parser.add_argument("--use_cache", type=str2bool, default=True, help="KV cache (false: recompute; slow)")
    parser.add_argument("--cache", choices=CACHES, default=defaults.cache,
                        help="greedy search cache: dynamic (reference) or static (preallocated; same ids, GPU-fast)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default=defaults.compile,
                        help="with --cache static on a GPU: replay each decode step as a CUDA graph (cudagraph) "
                             "or build it with torch.compile first (inductor); eager elsewhere")
    parser.add_argument("--sync_every", type=int, default=defaults.sync_every,
                        help="with --cache static: read tokens back to the host every N steps")
    parser.add_argument("--cache_chunk", type=int, default=defaults.cache_chunk,
                        help="with --cache static: cache length rounded up to a multiple of this")
    parser.add_argument("--log_level", default="INFO")
    add_verbose_argument(parser)
    return parser


def write_outputs(
    output_dir: Path, keys: Sequence[str], results: Mapping[str, Decoded], asked: Mapping[str, int]
) -> None:
    """The output files; ``asked``: the history each utterance asked for (``history_cut`` lists those that got less)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "text": lambda d: d.text,
        "text.plain": lambda d: d.plain,
        "token_scores": lambda d: " ".join([f"{d.score:.4f}", *(f"{lp:.4f}" for lp in d.token_logprobs)]),
        "raw": lambda d: d.raw,
    }
    for name, value in files.items():
        (output_dir / name).write_text("".join(f"{u} {value(results[u])}\n" for u in keys), encoding="utf-8")
    malformed = [(u, problem) for u in keys for problem in results[u].problems]
    (output_dir / "malformed").write_text("".join(f"{u} {p}\n" for u, p in malformed), encoding="utf-8")
    if malformed:
        counts = Counter(p.split(" (")[0] for _, p in malformed)
        logging.warning("%d problem(s) in %d outputs, listed in %s: %s", len(malformed), len(keys),
                        output_dir / "malformed", dict(counts))
    cut = [(u, results[u].history_used, asked[u]) for u in keys if results[u].history_used < asked[u]]
    (output_dir / "history_cut").write_text("".join(f"{u} {used} of {n}\n" for u, used, n in cut), encoding="utf-8")
    if cut:
        logging.warning("%d of %d utterances decoded with fewer history utterances than asked (they did not fit "
                        "max_input_seconds with the current one), listed in %s", len(cut), len(keys),
                        output_dir / "history_cut")


def check_features(config: Mapping, model_dir: Path, feats_scp: str, encoder_conf: Mapping) -> None:
    """Refuse features made otherwise than the model's training input (see the module docstring)."""
    record = settings_file(feats_scp)
    decoding = read_feature_settings(record)
    if decoding is None:
        logging.warning("%s not found: cannot check that %s were made as the training features", record, feats_scp)
        return
    if config["encoder"] == "whisper":  # log-mel input; the encoder's own padding comes from the training config
        if decoding.input_type != "mel":
            raise UserError(f"{record}: {decoding.input_type} features, but {model_dir} was trained on log-mel input")
        default = inspect.signature(WhisperSpeechEncoder).parameters["pad_to_30s"].default
        trained = (config.get("encoder_conf") or {}).get("pad_to_30s", default)
        if "pad_to_30s" in encoder_conf and str2bool(str(encoder_conf["pad_to_30s"])) != trained:
            raise UserError(
                f"--encoder_conf pad_to_30s={encoder_conf['pad_to_30s']}, but {model_dir} was trained with "
                f"pad_to_30s {trained}: leave it out to decode as trained"
            )
        return
    source = [entry[0] for entry in config.get("train_data_path_and_name_and_type", []) if entry[1] == "speech"]
    trained_record = settings_file(source[0]) if len(source) == 1 else None
    trained = read_feature_settings(trained_record) if trained_record else None
    if trained is None:
        logging.warning("no record of how %s's training features were made (%s): cannot check %s", model_dir,
                        trained_record, record)
        return
    differences = mismatched_settings(decoding, trained)
    if differences:
        raise UserError(
            f"{record}: these features were made otherwise than {model_dir}'s training features ({trained_record}): "
            f"{'; '.join(differences)}; dump them again as the training features were (stage 3)"
        )


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    speech = [(p, t) for p, name, t in args.data_path_and_name_and_type if name == "speech"]
    if len(speech) != 1 or speech[0][1] != "kaldi_ark":
        raise SystemExit(f"need exactly one 'FEATS_SCP,speech,kaldi_ark' entry, got {args.data_path_and_name_and_type}")
    if args.history < 0 or args.batch_size < 1:
        raise SystemExit("need --history >= 0 and --batch_size >= 1")
    if args.history and args.history_file is None:
        raise SystemExit("--history > 0 needs --history_file")
    if args.log_every < 1:
        raise SystemExit("need --log_every >= 1")
    device = device_for_ngpu(args.ngpu)
    config = yaml.safe_load((args.model_dir / "config.yaml").read_text(encoding="utf-8"))
    check_features(config, args.model_dir, speech[0][0], args.encoder_conf)
    feats = open_features(speech[0][0])
    options = DecodingOptions(
        beam_size=args.beam_size, length_penalty=args.length_penalty, maxlenratio=args.maxlenratio,
        maxlen_const=args.maxlen_const, maxlen_cap=args.maxlen_cap, repeat_ngram=args.repeat_ngram,
        repeat_times=args.repeat_times, use_cache=args.use_cache, cache=args.cache, compile=args.compile,
        sync_every=args.sync_every, cache_chunk=args.cache_chunk,
    )
    engine = Speech2TextNER.from_config(
        args.model_dir / "config.yaml", args.model_dir / args.model_file, args.encoder_conf, args.llm_conf,
        args.tokenizer_file, device, resolve_dtype(args.dtype, device), options, args.batch_size, args.merge_lora,
    )
    keys = read_keys(args.key_file, feats, speech[0][0]) if args.key_file else list(feats)
    history = read_history_file(args.history_file) if args.history_file else {}
    results = engine.decode_long_form(feats, keys, history, args.history, args.task, args.log_every)
    asked = {uid: len(history[uid][-args.history :]) if args.history else 0 for uid in keys}
    write_outputs(args.output_dir, keys, results, asked)
    logging.info("%d utterances decoded into %s", len(keys), args.output_dir)


if __name__ == "__main__":
    sys.exit(run_cli(main))
