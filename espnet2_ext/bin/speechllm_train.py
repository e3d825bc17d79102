"""Train the speech-LLM: ``python -m espnet2_ext.bin.speechllm_train --config CONF ...`` (ESPnet2 AbsTask CLI).

Options go to ESPnet's parser; ``ESPNET2_EXT_VERBOSE=1`` shows the traceback of an input error.
"""

from __future__ import annotations

import sys

from espnet2_ext.cli import run_cli
from espnet2_ext.tasks.speechllm import SpeechLLMTask


def main(cmd: list[str] | None = None) -> None:
    SpeechLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
