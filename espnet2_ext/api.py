"""Python API and the decoding engine shared by the inference CLI: speech in, transcript with entities out.

    from espnet2_ext.api import Speech2TextNER
    s2t = Speech2TextNER.from_pretrained("exp/decoder_only/packed", whisper="whisper-large-v2", llm="chatglm3-6b")
    for result in s2t(["a.wav", waveform_16k], sample_rate=16000):
        print(result.text, result.entities, result.warnings)

A model is built from ESPnet's training ``config.yaml`` through :class:`SpeechLLMTask` (checkpoint
paths overridden), then its trainable weights are loaded. The frozen Whisper and base LLM weights
are read straight into the decoding dtype on the decoding device (bfloat16 on a GPU: no float32
copy of a 6B model on the host), the LoRA weights (held in float32 by the task) are merged into
the base (:mod:`~espnet2_ext.speechllm.lora_merge`), and the connector is cast; float buffers
(the LLM's rotary frequencies) stay float32.
``from_pretrained`` always runs the frozen Whisper encoder on Whisper log-mel
(``frontend.WhisperLogMel``), also for a model trained on cached encoder outputs, whose
``precomputed`` encoder is swapped for ``whisper``; it decodes with the input settings the packed
model recorded (``pad_to_30s``, n_mels, sample rate). The CLI keeps the training config's encoder
(cached outputs or log-mel, as dumped by the recipe); dumped features may be float16 or float32
and are converted to the model's dtype when a batch is built.

Audio is checked before anything is decoded, and refused with :class:`BadInputAudio` (a
``ValueError`` naming the item) rather than transcribed: float samples must lie in [-1, 1] (int16
is scaled only with ``int16_scale=True``), arrays come with their ``sample_rate`` (resampled to
16 kHz only with ``resample=True``), no NaN/Inf, mono, between ``min_seconds`` and ``max_seconds``.
Usable but doubtful audio (clipped, very quiet) is decoded and said so in :attr:`Result.warnings`.

Output formats (Table 1) follow the task and what the model was trained on: ``ner`` decodes
``T_{i-k} … |sep| T_i |ner| T̂_i`` (cot_ner); ``asr`` decodes long-form ``… |sep| T_i`` when the
model learnt long-form ASR, else short-form ``T_i``. The history transcripts (and ``|sep|``) are
*forced* text after the ``|asr|`` prompt, so the model continues from the current utterance. All
tasks share the prompt ``|asr|``, so the task is set by :class:`TextConstraint`: NER may not end
before ``|ner|``; ASR ends at ``|ner|``. Outputs are parsed with ``prompts.parse_output`` (which
repairs) and checked: an output that is not exactly the trained format, invalid markup (stripped),
a repetition loop or a missing eos is listed in :attr:`Decoded.problems`, never an exception.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
import yaml

from espnet2_ext.checkpoint_io import DTYPES, load_state_file
from espnet2_ext.progress import Progress
from espnet2_ext.speechllm.decoding import DecodingOptions, Hypothesis, TextConstraint, decode
from espnet2_ext.speechllm.espnet_model import LLMInputs, SpeechInputs, SpeechLLMModel
from espnet2_ext.speechllm.frontend import HOP_LENGTH, SAMPLE_RATE, WhisperLogMel
from espnet2_ext.speechllm.lora_merge import merge_lora
from espnet2_ext.speechllm.preprocessor import fitting_history
from espnet2_ext.speechllm.prompts import build_target_text, parse_output
from espnet2_ext.tasks.speechllm import SpeechLLMTask
from espnet2_ext.text.chatglm3_tokenizer import ASR_TOKEN, NER_TOKEN, ChatGLM3Tokenizer
from espnet2_ext.text.kaldi_text import BadAudio, read_audio
from espnet2_ext.text.ner_markup import Entity, MarkupError, parse_markup, strip_markup

TASKS: tuple[str, ...] = ("asr", "ner")
MIN_SECONDS = 0.3
MAX_SECONDS = 30.0  # Whisper's window: longer input would be cropped (pad_to_30s) or refused by the encoder
CLIP_LEVEL = 0.999  # |x| at or above: a clipped sample
CLIPPED_FRACTION = 0.001  # warn when more samples than this are clipped
QUIET_PEAK_DBFS = -40.0  # warn when the peak is below


class BadInputAudio(ValueError):
    """Audio the API refuses; the message starts with the item (index, and file if any)."""

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: {reason}")


@dataclass
class Request:
    """One utterance: encoder-input features (T, D) of its history (oldest first) and itself."""

    uid: str
    current: np.ndarray
    history: list[np.ndarray] = field(default_factory=list)
    history_texts: list[str] = field(default_factory=list)  # plain transcripts of ``history``


@dataclass
class Decoded:
    """The decoded current utterance: ``text`` (markup for ner), ``plain``, the full ``raw`` output;
    ``history_used``: how many previous utterances it was decoded with (fewer than asked when they did not fit)."""

    uid: str
    text: str
    plain: str
    raw: str
    token_logprobs: list[float]
    score: float
    problems: list[str]
    history_used: int = 0


@dataclass
class Result:
    """What the API returns per input; ``warnings``: doubtful audio and repaired or suspicious output."""

    text: str
    plain: str
    entities: list[Entity]
    warnings: list[str] = field(default_factory=list)


def output_format(task: str, history: int, trained_tasks: Sequence[str]) -> str:
    """The Table-1 format (prompts.TASKS) that decodes ``task`` with a model trained on ``trained_tasks``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "ner":
        if "cot_ner" not in trained_tasks:
            raise ValueError(f"task ner needs a model trained on cot_ner; this one learnt {list(trained_tasks)}")
        return "cot_ner"
    if "long_asr" in trained_tasks or "cot_ner" in trained_tasks:
        return "long_asr"
    if history:
        raise ValueError(f"history {history} needs a model trained on long-form tasks; this one learnt {list(trained_tasks)}")
    return "short_asr"


def build_model(
    config: dict,
    model_file: str | Path,
    encoder_conf: Mapping[str, object] | None = None,
    llm_conf: Mapping[str, object] | None = None,
    tokenizer_file: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    merge: bool = True,
) -> tuple[SpeechLLMModel, argparse.Namespace]:
    """Build from a training config (with path overrides) and load the trainable weights of ``model_file``.

    The frozen weights are read in ``dtype`` onto ``device``; LoRA is merged into the LLM unless
    ``merge`` is false (see the module docstring).
    """
    args = argparse.Namespace(**config)
    args.encoder_conf = {**(args.encoder_conf or {}), **(encoder_conf or {})}
    args.llm_conf = {**(args.llm_conf or {}), **(llm_conf or {}), "dtype": dtype}  # also a fully trained LLM
    args.frozen_dtype = dtype  # the frozen Whisper weights and autocast
    args.ngpu = int(torch.device(device).type == "cuda")  # where the task reads the frozen weights to
    if tokenizer_file is not None:
        args.tokenizer_file = str(tokenizer_file)
    model = SpeechLLMTask.build_model(args)
    model.load_state_dict(load_state_file(model_file))
    if args.llm_finetune == "lora" and merge:
        logging.info("LoRA merged into %d layers of the LLM", merge_lora(model.llm))
    model.connector.to(DTYPES[dtype])
    return model.to(device).eval(), args


def schedule(keys: Sequence[str], history: Mapping[str, list[str]], k: int) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Waves of utterances whose K previous utterances are all in earlier waves, and those predecessors."""
    needs: dict[str, list[str]] = {}
    known = set(keys)
    for uid in keys:
        if k and uid not in history:
            raise ValueError(f"utterance {uid} is not in the history file")
        needs[uid] = history[uid][-k:] if k else []
        missing = [p for p in needs[uid] if p not in known]
        if missing:
            raise ValueError(f"history {missing} of utterance {uid} is not among the keys; split jobs by speaker")
    wave: dict[str, int] = {}
    for uid in keys:  # depth-first over predecessors; keys may come in any order
        path, on_path = [(uid, iter(needs[uid]))], {uid}
        while path:
            node, predecessors = path[-1]
            pending = next((p for p in predecessors if p not in wave), None)
            if pending is None:
                wave[node] = 1 + max((wave[p] for p in needs[node]), default=-1)
                on_path.discard(node)
                path.pop()
            elif pending in on_path:
                raise ValueError(f"history of utterance {node} is circular")
            else:
                on_path.add(pending)
                path.append((pending, iter(needs[pending])))
    waves: list[list[str]] = [[] for _ in range(max(wave.values(), default=-1) + 1)]
    for uid in keys:
        waves[wave[uid]].append(uid)
    return waves, needs


class Speech2TextNER:
    """Batched decoding of :class:`Request` s (CLI) or of waveforms / audio files (``__call__``)."""

    def __init__(
        self,
        model: SpeechLLMModel,
        tokenizer: ChatGLM3Tokenizer,
        preprocessor_conf: Mapping[str, object],
        options: DecodingOptions = DecodingOptions(),
        frontend: WhisperLogMel | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessor_conf = dict(preprocessor_conf)
        self.trained_tasks = list(self.preprocessor_conf.get("tasks", {"short_asr": 1.0}))
        seconds = float(self.preprocessor_conf.get("max_input_seconds", 30.0))
        self.max_input_frames = round(seconds * model.encoder.frames_per_second)
        self.options = options
        self.frontend = frontend
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.dtype = next(p for p in model.connector.parameters()).dtype

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_config(
        cls,
        config_file: str | Path,
        model_file: str | Path,
        encoder_conf: Mapping[str, object] | None = None,
        llm_conf: Mapping[str, object] | None = None,
        tokenizer_file: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        options: DecodingOptions = DecodingOptions(),
        batch_size: int = 8,
        merge: bool = True,
    ) -> "Speech2TextNER":
        """From an experiment directory's ``config.yaml`` and checkpoint (what the CLI decodes with)."""
        config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        model, args = build_model(config, model_file, encoder_conf, llm_conf, tokenizer_file, device, dtype, merge)
        tokenizer = ChatGLM3Tokenizer(args.tokenizer_file)
        return cls(model, tokenizer, args.preprocessor_conf or {}, options, batch_size=batch_size)

    @classmethod
    def from_pretrained(
        cls,
        packed_dir: str | Path,
        whisper: str | Path,
        llm: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        pad_to_30s: bool | None = None,
        options: DecodingOptions = DecodingOptions(),
        batch_size: int = 8,
        merge: bool = True,
    ) -> "Speech2TextNER":
        """From a ``bin/pack_model.py`` directory plus the frozen base checkpoints; input is audio.

        The input is made as the model's training input was (``meta.json``'s ``input``). ``pad_to_30s``
        None (the default) takes the recorded setting; a value that contradicts it is an error (the
        model would hear input unlike its training input); a model packed without the record needs it stated.
        """
        packed_dir = Path(packed_dir)
        trained = packed_input_settings(packed_dir)
        if trained is None and pad_to_30s is None:
            raise ValueError(
                f"{packed_dir / 'meta.json'} does not record the input settings the model was trained with "
                "(packed by an older bin/pack_model.py): repack it, or pass pad_to_30s= as it was trained"
            )
        if trained is not None:
            if trained["sample_rate"] != SAMPLE_RATE:
                rate = trained["sample_rate"]
                raise ValueError(f"{packed_dir}: trained on {rate} Hz input; the front end takes {SAMPLE_RATE} Hz")
            if pad_to_30s is None:
                pad_to_30s = trained["pad_to_30s"]
            elif pad_to_30s != trained["pad_to_30s"]:
                raise ValueError(
                    f"pad_to_30s={pad_to_30s}, but {packed_dir} was trained with pad_to_30s={trained['pad_to_30s']} "
                    f"({packed_dir / 'meta.json'}): leave pad_to_30s unset to decode as trained"
                )
        config = yaml.safe_load((packed_dir / "config.yaml").read_text(encoding="utf-8"))
        precomputed_size = config["encoder_conf"].get("output_size") if config["encoder"] == "precomputed" else None
        config["encoder"] = "whisper"
        config["encoder_conf"] = {}
        model, args = build_model(
            config, packed_dir / "model.pth", {"path": str(whisper), "pad_to_30s": pad_to_30s}, {"path": str(llm)},
            packed_dir / "tokenizer.model", device, dtype, merge,
        )
        whisper_width = model.encoder.output_size()
        if precomputed_size not in (None, whisper_width):
            raise ValueError(f"{whisper}: encoder width {whisper_width}, the model was trained on {precomputed_size}")
        n_mels = model.encoder.whisper.config.num_mel_bins
        if trained is not None and trained["n_mels"] not in (None, n_mels):
            raise ValueError(f"{whisper}: {n_mels} mel bins, the model was trained on {trained['n_mels']}")
        frontend = WhisperLogMel(n_mels, pad_to_30s=pad_to_30s).to(device)
        tokenizer = ChatGLM3Tokenizer(args.tokenizer_file)
        return cls(model, tokenizer, args.preprocessor_conf or {}, options, frontend, batch_size)

    # ---------------------------------------------------------------- decoding
    def prompt_ids(self, fmt: str, history_texts: Sequence[str]) -> tuple[list[int], str]:
        """``|asr|`` plus the forced text (history transcripts and ``|sep|``) and that text."""
        forced = "" if fmt == "short_asr" else build_target_text("long_asr", history_texts, "")
        return self.tokenizer.encode(ASR_TOKEN) + (self.tokenizer.encode(forced) if forced else []), forced

    def constraint(self, fmt: str) -> TextConstraint | None:
        if fmt == "cot_ner":
            return TextConstraint(self.tokenizer.decode, require=NER_TOKEN)
        if fmt == "long_asr":
            return TextConstraint(self.tokenizer.decode, stop=NER_TOKEN)
        return None

    def llm_inputs(self, requests: Sequence[Request], fmt: str) -> tuple[LLMInputs, SpeechInputs, list[str], list[int]]:
        """Batch ``requests``: LLM inputs, speech inputs, forced texts and length limits."""
        segments = [[*r.history, r.current] for r in requests]
        speech = torch.nn.utils.rnn.pad_sequence(  # float16 or float32 as stored -> the model's dtype
            [torch.from_numpy(np.concatenate(s)).to(self.device, self.dtype) for s in segments], batch_first=True
        )
        seg_lengths = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor([x.shape[0] for x in s]) for s in segments], batch_first=True
        ).to(self.device)
        num_segments = torch.tensor([len(s) for s in segments], device=self.device)
        prompts, forced = zip(*(self.prompt_ids(fmt, r.history_texts) for r in requests))
        prompt = torch.nn.utils.rnn.pad_sequence([torch.tensor(p) for p in prompts], batch_first=True).to(self.device)
        prompt_lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        speech_in = self.model.encode_speech(
            speech, seg_lengths.sum(1), seg_lengths, num_segments, num_segments - 1
        )
        frames = self.model.encoder.output_lengths(torch.tensor([r.current.shape[0] for r in requests]))
        limits = [self.options.max_new_tokens(int(f)) for f in frames]
        return self.model.build_inputs(speech_in, prompt, prompt_lengths), speech_in, list(forced), limits

    def history_request(
        self, uid: str, feats: Mapping[str, np.ndarray], previous: Sequence[str], hypotheses: Mapping[str, Decoded]
    ) -> Request:
        """Utterance ``uid`` with the previous utterances that fit ``max_input_seconds`` and their hypotheses
        (features as stored: float16 or float32)."""
        current = np.asarray(feats[uid])
        audio = [np.asarray(feats[p]) for p in previous]
        kept = fitting_history([x.shape[0] for x in audio], self.max_input_frames - current.shape[0])
        kept_ids = previous[len(previous) - kept :]
        return Request(uid, current, audio[len(audio) - kept :], [hypotheses[p].plain for p in kept_ids])

    def decode_long_form(
        self,
        feats: Mapping[str, np.ndarray],
        keys: Sequence[str],
        history: Mapping[str, list[str]],
        k: int,
        task: str,
        log_every: int = 100,
    ) -> dict[str, Decoded]:
        """Decode ``keys`` wave by wave (see :func:`schedule`), each on its K previous utterances and
        the hypotheses already made for them; a wave sorted by input length (longest first) into
        batches of ``batch_size``. Short-form (K = 0) is one wave: the whole job sorted by length.
        The results are keyed by utterance (callers write them in their own order); a progress line
        every ``log_every`` utterances."""
        waves, needs = schedule(keys, history, k)
        results: dict[str, Decoded] = {}
        progress = Progress(f"decoding ({task}, history {k})", len(keys), log_every)
        for number, members in enumerate(waves):
            requests = [self.history_request(uid, feats, needs[uid], results) for uid in members]
            requests.sort(key=lambda r: -(r.current.shape[0] + sum(x.shape[0] for x in r.history)))
            for start in range(0, len(requests), self.batch_size):
                for decoded in self.decode_requests(requests[start : start + self.batch_size], task):
                    results[decoded.uid] = decoded
                progress.update(len(results))
            logging.debug("wave %d/%d: %d utterances decoded", number + 1, len(waves), len(members))
        return results

    @torch.no_grad()
    def decode_requests(self, requests: Sequence[Request], task: str) -> list[Decoded]:
        """Decode one batch of requests (all with the task's format)."""
        for r in requests:
            if len(r.history) != len(r.history_texts):
                raise ValueError(f"utterance {r.uid}: {len(r.history)} history features, {len(r.history_texts)} texts")
        fmt = output_format(task, max(len(r.history) for r in requests), self.trained_tasks)
        inputs, _, forced, limits = self.llm_inputs(requests, fmt)
        nbest = decode(self.model, inputs, limits, self.options, self.constraint(fmt))
        decoded = [self.interpret(r.uid, fmt, f, hyps[0]) for r, f, hyps in zip(requests, forced, nbest)]
        for d, r in zip(decoded, requests):
            d.history_used = len(r.history)
        return decoded

    def interpret(self, uid: str, fmt: str, forced: str, hyp: Hypothesis) -> Decoded:
        """Parse, check and repair one hypothesis (``forced``: the forced text before it)."""
        generated = self.tokenizer.decode(hyp.ids)
        raw = forced + generated
        body = raw.split(NER_TOKEN)[0] if fmt != "cot_ner" else raw
        parsed = parse_output(fmt, body)
        history = [parsed.history] if parsed.history else []
        text = parsed.current_markup if fmt == "cot_ner" else parsed.current_plain
        problems = []
        if build_target_text(fmt, history, text) != body:
            problems.append("not in the trained format (repaired by parse_output)")
        try:
            parse_markup(text, utt_id=uid)
        except MarkupError as err:
            problems.append(f"invalid markup, stripped ({err.reason})")
            text = strip_markup(text)
        if hyp.end == "repetition":
            problems.append("repetition loop cut")
        elif hyp.end == "max_length":
            problems.append(f"no eos within {len(hyp.token_logprobs)} tokens")
        return Decoded(uid, text, strip_markup(text), raw, hyp.token_logprobs, hyp.score, problems)

    # ---------------------------------------------------------------- audio API
    def __call__(
        self,
        audio: np.ndarray | str | Path | Sequence[np.ndarray | str | Path],
        task: str = "ner",
        *,
        sample_rate: int | None = None,
        resample: bool = False,
        int16_scale: bool = False,
        min_seconds: float = MIN_SECONDS,
        max_seconds: float = MAX_SECONDS,
    ) -> list[Result]:
        """Decode waveforms or audio files (each on its own, no history), batched.

        ``sample_rate`` is the rate of the arrays (files carry their own); input not at 16 kHz is
        resampled only with ``resample=True``. int16 arrays are scaled by 1/32768 only with
        ``int16_scale=True``. Every item is checked before any is decoded (see the module docstring).
        """
        if self.frontend is None:
            raise RuntimeError("this instance decodes features; build it with from_pretrained to decode audio")
        if not HOP_LENGTH / SAMPLE_RATE <= min_seconds <= max_seconds <= MAX_SECONDS:
            raise ValueError(
                f"need {HOP_LENGTH / SAMPLE_RATE} <= min_seconds <= max_seconds <= {MAX_SECONDS}, "
                f"got {min_seconds}, {max_seconds}"
            )
        items = [audio] if isinstance(audio, (np.ndarray, str, Path)) else list(audio)
        checked = [
            checked_audio(i, item, sample_rate, resample, int16_scale, min_seconds, max_seconds)
            for i, item in enumerate(items)
        ]
        results: list[Result] = []
        for start in range(0, len(items), self.batch_size):
            chunk = checked[start : start + self.batch_size]
            requests = [Request(str(start + i), self._log_mel(wave)) for i, (wave, _) in enumerate(chunk)]
            for decoded, (_, doubts) in zip(self.decode_requests(requests, task), chunk):
                entities = parse_markup(decoded.text).entities
                results.append(Result(decoded.text, decoded.plain, entities, [*doubts, *decoded.problems]))
        return results

    def _log_mel(self, wave: np.ndarray) -> np.ndarray:
        samples = torch.from_numpy(wave)[None].to(self.device)
        mel, length = self.frontend(samples, torch.tensor([samples.shape[1]], device=self.device))
        return mel[0, : int(length[0])].float().cpu().numpy()


def packed_input_settings(packed_dir: Path) -> dict | None:
    """The ``input`` settings a packed model's ``meta.json`` records; None for a model packed without them."""
    meta = json.loads((packed_dir / "meta.json").read_text(encoding="utf-8"))
    return meta.get("input")


def checked_audio(
    index: int,
    item: np.ndarray | str | Path,
    sample_rate: int | None,
    resample: bool,
    int16_scale: bool,
    min_seconds: float,
    max_seconds: float,
) -> tuple[np.ndarray, list[str]]:
    """Mono float32 samples at 16 kHz for one API input and its warnings, or :class:`BadInputAudio`."""
    is_file = isinstance(item, (str, Path))
    name = f"item {index} ({item})" if is_file else f"item {index}"
    if is_file:
        try:
            wave, rate = read_audio(item)
        except BadAudio as err:
            raise BadInputAudio(name, str(err)) from err
    else:
        if sample_rate is None:
            raise BadInputAudio(name, f"give the arrays' sample_rate (the model takes {SAMPLE_RATE} Hz)")
        wave, rate = _float_samples(name, np.asarray(item), int16_scale), sample_rate
    if not np.isfinite(wave).all():
        raise BadInputAudio(name, f"{int((~np.isfinite(wave)).sum())} NaN or infinite samples")
    peak = float(np.abs(wave).max(initial=0.0))
    if peak > 1.0:
        raise BadInputAudio(
            name, f"float samples must lie in [-1, 1], the peak is {peak:.4g} (int16 values? divide by 32768)"
        )
    if rate != SAMPLE_RATE:
        if not resample:
            raise BadInputAudio(name, f"sample rate {rate} Hz, the model takes {SAMPLE_RATE} Hz; pass resample=True")
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    seconds = len(wave) / SAMPLE_RATE
    if not min_seconds <= seconds <= max_seconds:
        raise BadInputAudio(name, f"{seconds:.2f} s long, outside [{min_seconds:g}, {max_seconds:g}] s")
    return np.ascontiguousarray(wave, dtype=np.float32), audio_warnings(wave, peak)


def _float_samples(name: str, array: np.ndarray, int16_scale: bool) -> np.ndarray:
    if array.ndim != 1:
        raise BadInputAudio(name, f"expected a mono waveform (1-D array), got shape {array.shape}")
    if array.dtype == np.int16:
        if not int16_scale:
            raise BadInputAudio(name, "int16 samples; pass int16_scale=True to scale them by 1/32768")
        return array.astype(np.float32) / 32768.0
    if array.dtype.kind != "f":
        raise BadInputAudio(name, f"samples of dtype {array.dtype}; give float samples in [-1, 1] (or int16)")
    return array.astype(np.float32)


def audio_warnings(wave: np.ndarray, peak: float) -> list[str]:
    """What makes usable audio doubtful: clipping, a very low level."""
    found = []
    clipped = int((np.abs(wave) >= CLIP_LEVEL).sum())
    if clipped > CLIPPED_FRACTION * len(wave):
        found.append(f"clipped: {clipped} samples ({100 * clipped / len(wave):.1f}%) at full scale")
    if peak == 0.0:
        found.append("silent: every sample is zero")
    elif 20 * np.log10(peak) < QUIET_PEAK_DBFS:
        found.append(f"very quiet: peak {20 * np.log10(peak):.0f} dBFS")
    return found
