"""ESPnet2 task for the speech-LLM: Whisper/cached encoder output -> connector -> ChatGLM3.

Choices: ``--encoder {precomputed,whisper}`` (``precomputed``: cached encoder outputs, the
default; ``whisper``: log-mel input through the frozen encoder — the encoder choice *is* the
input type, so there is no separate ``--input_type`` to keep in agreement with it),
``--connector {adapter,cross_attention}``, ``--llm chatglm3``. Options: ``--tokenizer_file``,
``--llm_finetune {lora,full,frozen}``, ``--lora_conf``, ``--preprocessor_conf``.

The preprocessor looks other utterances up by id. Its ``feats_scp``/``text_file`` default to the
``speech``/``text`` entries of ``--train_data_path_and_name_and_type`` (training) or of both
the valid and the train entries (evaluation: valid, and collect-stats over train);
``history_file`` defaults to the ``history`` lists next to those text files (Kaldi data dirs).

Only trainable parameters reach the optimizer, and only they are checkpointed (see
:class:`SpeechLLMModel`); checkpoints (``--resume``, ``--init_param``) are loaded ``weights_only``
(see :mod:`espnet2_ext.tasks.safe_loading`). The preprocessor learns the epoch from the iterator
factory so its random formats are reproducible per epoch, also after ``--resume``.

Full size (see :mod:`espnet2_ext.speechllm.precision`): ``--frozen_dtype bfloat16`` reads the
frozen Whisper/LLM weights straight into bf16 on the training device (one shard at a time),
keeps trainable parameters in fp32 and runs the forward pass under bf16 autocast;
``--activation_checkpointing true`` recomputes LLM layers in the backward pass;
``--batch_type token_budget`` fills batches up to ``--batch_bins`` LLM tokens
(:mod:`espnet2_ext.samplers.token_budget`).
"""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from espnet2.fileio.read_text import load_num_sequence_text
from espnet2.iterators.abs_iter_factory import AbsIterFactory
from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
from espnet2.tasks.abs_task import AbsTask, optim_classes
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str_or_none

from espnet2_ext.checkpoint_io import DTYPES
from espnet2_ext.errors import UserError
from espnet2_ext.samplers.token_budget import BATCH_TYPE, ExampleCoster, TokenBudgetIterFactory
from espnet2_ext.speechllm.backbones import ChatGLM3Source, PrecomputedEncoder, WhisperSpeechEncoder
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector, SpeechConnector
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.speechllm.input_settings import read_feature_settings, settings_file
from espnet2_ext.speechllm.lora import LLM_FINETUNE_MODES, configure_llm_finetuning
from espnet2_ext.speechllm.param_table import format_parameter_table, parameter_counts
from espnet2_ext.speechllm.precision import (
    FROZEN_DTYPES,
    check_precision_args,
    check_stored_dtype,
    keep_trainable_fp32,
)
from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor
from espnet2_ext.speechllm.whisper_encoder import encoder_output_lengths
from espnet2_ext.tasks.safe_loading import SafeLoadingTask
from espnet2_ext.text.chatglm3_tokenizer import ChatGLM3Tokenizer

encoder_choices = ClassChoices(
    "encoder",
    classes=dict(precomputed=PrecomputedEncoder, whisper=WhisperSpeechEncoder),
    default="precomputed",
)
connector_choices = ClassChoices(
    "connector",
    classes=dict(adapter=AdapterConnector, cross_attention=CrossAttentionConnector),
    type_check=SpeechConnector,
    default="adapter",
)
llm_choices = ClassChoices("llm", classes=dict(chatglm3=ChatGLM3Source), default="chatglm3")


class _EpochSettingIterFactory(AbsIterFactory):
    """Tells the preprocessor the epoch before the epoch's data loader is built."""

    def __init__(self, inner: AbsIterFactory, preprocessor: SpeechLLMPreprocessor) -> None:
        self.inner = inner
        self.preprocessor = preprocessor

    def build_iter(self, epoch: int, shuffle: bool | None = None):
        self.preprocessor.set_epoch(epoch)
        return self.inner.build_iter(epoch, shuffle)


def _data_paths(entries: Sequence[Sequence[str]] | None, name: str) -> list[str]:
    return [path for path, data_name, _ in (entries or []) if data_name == name]


ENCODER_INPUT = {"precomputed": "encoder_output", "whisper": "mel"}  # what each encoder choice reads


def check_input_type(args: argparse.Namespace) -> None:
    """Refuse features the config's encoder cannot read, by their ``feats_conf.json`` (stage 3's record)."""
    wanted = ENCODER_INPUT[args.encoder]
    for entries in (args.train_data_path_and_name_and_type, args.valid_data_path_and_name_and_type):
        for scp in _data_paths(entries, "speech"):
            record = read_feature_settings(settings_file(scp))
            if record is not None and record.input_type != wanted:
                other = next(k for k, v in ENCODER_INPUT.items() if v == record.input_type)
                raise UserError(
                    f"{scp}: {record.input_type} features ({settings_file(scp)}), but the config's encoder "
                    f"'{args.encoder}' reads {wanted}: run llm.sh with --input_type {record.input_type}, "
                    f"or train with --encoder {other}"
                )


class SpeechLLMTask(SafeLoadingTask, AbsTask):
    """Speech-LLM ASR/NER training (Table-1 formats, three phases via configs)."""

    num_optimizers: int = 1
    class_choices_list = [encoder_choices, connector_choices, llm_choices]
    weights_device: str = "cpu"  # where frozen weights are read to; training on GPUs sets "cuda" (main_worker)

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(description="Task related")
        group.add_argument("--tokenizer_file", type=str_or_none, default=None,
                           help="ChatGLM3 sentencepiece tokenizer.model")
        group.add_argument("--llm_finetune", type=str, default="lora", choices=LLM_FINETUNE_MODES,
                           help="lora: peft LoRA on the LLM projections; full: train the whole LLM; frozen: none")
        group.add_argument("--lora_conf", action=NestedDictAction, default=dict(),
                           help="peft LoraConfig overrides (defaults: r 32, alpha 64, dropout 0.05)")
        group.add_argument("--preprocessor_conf", action=NestedDictAction, default=dict(),
                           help="SpeechLLMPreprocessor options (tasks, max_concat, max_history, "
                           "eval_task, eval_history, max_input_seconds, history_file, ...)")
        group.add_argument("--use_preprocessor", type=str2bool, default=True,
                           help="Build Table-1 examples (needed for training)")
        group.add_argument("--frozen_dtype", type=str, default="float32", choices=FROZEN_DTYPES,
                           help="dtype of the frozen Whisper/LLM weights and of autocast (trainable weights stay "
                           "float32; keep train_dtype float32)")
        group.add_argument("--activation_checkpointing", type=str2bool, default=False,
                           help="recompute each LLM layer in the backward pass instead of keeping its activations")
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def get_parser(cls):
        """ESPnet's parser with one more batch type: ``token_budget`` (``--batch_bins`` LLM tokens per batch)."""
        parser = super().get_parser()
        for action in parser._actions:
            if action.dest in ("batch_type", "valid_batch_type"):
                action.choices = [*action.choices, BATCH_TYPE]
                action.help += f'"{BATCH_TYPE}": batches of <= batch_bins LLM tokens (speech + text), see espnet2_ext.samplers.token_budget\n'
        return parser

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        """Refuse precision settings and checkpoints that cannot train as asked, before anything is built."""
        check_precision_args(args)
        check_input_type(args)
        if not args.collect_stats and args.llm_finetune != "full" and "dtype" not in args.llm_conf:
            check_stored_dtype(args.llm_conf.get("path", ""), DTYPES[args.frozen_dtype], "LLM")
        if args.num_iters_per_epoch is not None and BATCH_TYPE in (args.batch_type, args.valid_batch_type):
            raise UserError(f"--num_iters_per_epoch is not supported with --batch_type {BATCH_TYPE}")
        cls.weights_device = "cuda" if args.ngpu > 0 else "cpu"  # straight to this rank's GPU, not via host RAM
        try:
            super().main_worker(args)
        finally:
            cls.weights_device = "cpu"

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable:
        """Right-padded batches (ids padded with 0); the model re-packs them left-padded."""
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=0, not_sequence=["num_history"])

    @classmethod
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
        if not args.use_preprocessor:
            return None
        conf = dict(args.preprocessor_conf)
        if "max_input_frames" in conf:
            raise UserError(
                f"preprocessor_conf max_input_frames={conf['max_input_frames']} is now max_input_seconds, counted in "
                "seconds whatever the input (30 = Whisper's window = 1500 encoder or 3000 log-mel frames)"
            )
        sources = [args.train_data_path_and_name_and_type]
        if not train:
            sources.insert(0, getattr(args, "valid_data_path_and_name_and_type", None))
        conf.setdefault("feats_scp", [p for s in sources for p in _data_paths(s, "speech")])
        conf.setdefault("text_file", [p for s in sources for p in _data_paths(s, "text")])
        # Kaldi data dirs carry their speakers' history lists next to `text` (stage 1 writes them).
        conf.setdefault("history_file", [h for t in conf["text_file"] if (h := Path(t).parent / "history").is_file()])
        conf.setdefault("seed", args.seed)
        conf["frames_per_second"] = encoder_choices.get_class(args.encoder).frames_per_second
        return SpeechLLMPreprocessor(train=train, tokenizer_file=args.tokenizer_file, **conf)

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> tuple[str, ...]:
        return ("speech",) if inference else ("speech", "text")

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> tuple[str, ...]:
        return ()

    @classmethod
    def build_iter_factory(cls, args, distributed_option, mode: str, kwargs: dict | None = None):
        batch_type = args.batch_type if mode == "train" else (args.valid_batch_type or args.batch_type)
        if mode in ("train", "valid") and batch_type == BATCH_TYPE and kwargs is None:
            options = cls.build_iter_options(args, distributed_option, mode)
            return cls.build_token_budget_iter_factory(args, options, mode)
        factory = super().build_iter_factory(args, distributed_option, mode, kwargs)
        preprocessor = getattr(getattr(factory, "dataset", None), "preprocess", None)
        if isinstance(preprocessor, SpeechLLMPreprocessor):
            return _EpochSettingIterFactory(factory, preprocessor)
        return factory

    @classmethod
    def build_token_budget_iter_factory(cls, args: argparse.Namespace, options, mode: str) -> TokenBudgetIterFactory:
        """Batches of at most ``batch_bins`` LLM tokens, planned per epoch (see :mod:`token_budget`)."""
        preprocessor = options.preprocess_fn
        if not isinstance(preprocessor, SpeechLLMPreprocessor):
            raise UserError(f"--batch_type {BATCH_TYPE} needs --use_preprocessor true")
        if not options.shape_files:
            raise UserError(f"--batch_type {BATCH_TYPE} needs the speech shape file (--{mode}_shape_file)")
        shapes = load_num_sequence_text(options.shape_files[0], loader_type="csv_int")
        connector_class = connector_choices.get_class(args.connector)
        stack = args.connector_conf.get("stack", inspect.signature(connector_class).parameters["stack"].default)
        coster = ExampleCoster(
            preprocessor, {uid: shape[0] for uid, shape in shapes.items()}, stack,
            encoder_output_lengths if args.encoder == "whisper" else (lambda frames: frames),
        )
        dataset = cls.build_dataset(args, options)
        distributed = options.distributed and torch.distributed.is_initialized()

        def loader(batches: list[list[str]]) -> SequenceIterFactory:
            return SequenceIterFactory(
                dataset=dataset, batches=batches, seed=args.seed, shuffle=False, num_workers=args.num_workers,
                collate_fn=options.collate_fn, pin_memory=args.ngpu > 0,
            )

        return TokenBudgetIterFactory(
            coster, options.batch_bins, loader,
            world_size=torch.distributed.get_world_size() if distributed else 1,
            rank=torch.distributed.get_rank() if distributed else 0,
            accum_grad=args.accum_grad if mode == "train" else 1,
            seed=args.seed, shuffle=mode == "train", mode=mode,
        )

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        """The configured optimizer over the trainable parameters only (frozen Whisper/LLM excluded)."""
        if args.sharded_ddp or args.exclude_weight_decay:
            raise UserError("sharded_ddp and exclude_weight_decay are not supported by SpeechLLMTask")
        optim_class = optim_classes.get(args.optim)
        if optim_class is None:
            raise UserError(f"--optim must be one of {list(optim_classes)}: {args.optim}")
        trainable = [p for p in model.parameters() if p.requires_grad]
        return [optim_class(trainable, **args.optim_conf)]

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> SpeechLLMModel:
        return cls.build_model_on(args, meta=False)

    @classmethod
    def build_model_on(cls, args: argparse.Namespace, meta: bool) -> SpeechLLMModel:
        """Build the model; ``meta=True`` builds on the meta device from configs alone (no weights)."""
        if args.tokenizer_file is None and not meta:
            raise UserError("--tokenizer_file is required")
        frozen_dtype = DTYPES[getattr(args, "frozen_dtype", "float32")]
        device = "cpu" if meta else cls.weights_device
        encoder_class = encoder_choices.get_class(args.encoder)
        encoder_conf = dict(args.encoder_conf)
        if encoder_class is WhisperSpeechEncoder:
            encoder_conf.update(meta=meta, dtype=frozen_dtype, device=device)
        encoder = encoder_class(**encoder_conf)
        source = llm_choices.get_class(args.llm)(**args.llm_conf)
        full = args.llm_finetune == "full"
        llm = source.load(dtype=torch.float32 if full else frozen_dtype, device=device, meta=meta)
        context = torch.device("meta") if meta else torch.device("cpu")
        with context:
            connector = connector_choices.get_class(args.connector).build(
                encoder.output_size(), llm.config, **args.connector_conf
            )
        configure_llm_finetuning(llm, args.llm_finetune, args.lora_conf)
        encoder.requires_grad_(False)
        keep_trainable_fp32(llm)
        if meta:
            prefix_ids, eos_id = [0, 0], 2
        else:
            tokenizer = ChatGLM3Tokenizer(args.tokenizer_file)
            if tokenizer.vocab_size > llm.config.vocab_size:
                raise UserError(
                    f"tokenizer {args.tokenizer_file} has {tokenizer.vocab_size} ids, the LLM only "
                    f"{llm.config.vocab_size}"
                )
            prefix_ids, eos_id = tokenizer.prefix_ids, tokenizer.eos_id
        model = SpeechLLMModel(
            encoder, connector, llm, prefix_ids, eos_id,
            compute_dtype=source.dtype or frozen_dtype,
            activation_checkpointing=getattr(args, "activation_checkpointing", False),
        )
        logging.info("Parameters per component:\n%s", format_parameter_table(parameter_counts(model)))
        return model
