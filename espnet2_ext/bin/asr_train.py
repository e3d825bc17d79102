"""ESPnet's ``asr_train`` (the Conformer baseline) with every checkpoint loaded ``weights_only``.

``python -m espnet2_ext.bin.asr_train`` takes exactly ``python -m espnet2.bin.asr_train``'s options.
``--resume`` and ``--init_param`` checkpoints, and the epochs averaged at the end, are loaded
``weights_only``, and one that cannot be loaded is named (see :mod:`espnet2_ext.tasks.safe_loading`);
``ESPNET2_EXT_VERBOSE=1`` shows the traceback of an input error.
"""

from __future__ import annotations

import sys

from espnet2.tasks.asr import ASRTask

from espnet2_ext.cli import run_cli
from espnet2_ext.tasks.safe_loading import SafeLoadingTask


class SafeASRTask(SafeLoadingTask, ASRTask):
    """ESPnet's ASRTask, loading checkpoints ``weights_only``."""


def main(cmd: list[str] | None = None) -> None:
    SafeASRTask.main(cmd=cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
