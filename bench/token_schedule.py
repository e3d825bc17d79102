"""A training run's token-budget schedule, recomputed from its arguments: the batch of every iteration and its tokens.

``--batch_type token_budget`` (:mod:`espnet2_ext.samplers.token_budget`) plans each epoch from
(seed, epoch) and the shape file alone, so the batches a run trained on, and the speech and text
tokens of every example in them, follow from the run's command line without running the model.
The benchmark uses this to choose epochs before training and to count tokens and FLOPs after it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from espnet2.fileio.read_text import load_num_sequence_text

from espnet2_ext.samplers.token_budget import BATCH_TYPE, ExampleCoster, TokenBudgetIterFactory
from espnet2_ext.speechllm.whisper_encoder import encoder_output_lengths
from espnet2_ext.tasks.speechllm import SpeechLLMTask, connector_choices


@dataclass(frozen=True)
class ExampleTokens:
    """One example's LLM tokens: stacked speech (γ included), text (prefix, prompt, target, eos), scored targets."""

    speech: int
    text: int
    targets: int


class RunSchedule:
    """The training batches of a run with these training arguments, epoch by epoch (one process, rank 0)."""

    def __init__(self, argv: list[str]) -> None:
        self.args = args = SpeechLLMTask.get_parser().parse_args(argv)
        if args.batch_type != BATCH_TYPE:
            raise ValueError(f"{args.config}: batch_type must be {BATCH_TYPE}, not {args.batch_type}")
        self.preprocessor = SpeechLLMTask.build_preprocess_fn(args, train=True)
        shapes = load_num_sequence_text(args.train_shape_file[0], loader_type="csv_int")
        connector = connector_choices.get_class(args.connector)
        stack = args.connector_conf.get("stack", inspect.signature(connector).parameters["stack"].default)
        lengths = encoder_output_lengths if args.encoder == "whisper" else (lambda frames: frames)
        self.coster = ExampleCoster(self.preprocessor, {uid: shape[0] for uid, shape in shapes.items()}, stack, lengths)
        self.factory = TokenBudgetIterFactory(
            self.coster, args.batch_bins, loader=None, world_size=1, rank=0, accum_grad=args.accum_grad,
            seed=args.seed, shuffle=True, mode="train",
        )  # fmt: skip

    def batches(self, epoch: int) -> list[list[str]]:
        """The utterance ids of each iteration of ``epoch``, in training order."""
        return self.factory.batches(epoch)

    def tokens(self, uid: str, epoch: int) -> ExampleTokens:
        speech, text = self.coster.parts(uid, epoch)
        return ExampleTokens(speech, text, text - self.coster.prefix_tokens - len(self.preprocessor.prompt_ids))
