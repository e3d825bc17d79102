"""Train the speech-LLM: ``python -m espnet2_ext.bin.speechllm_train --config CONF ...`` (ESPnet2 AbsTask CLI)."""

from __future__ import annotations

from espnet2_ext.tasks.speechllm import SpeechLLMTask


def main(cmd: list[str] | None = None) -> None:
    SpeechLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
