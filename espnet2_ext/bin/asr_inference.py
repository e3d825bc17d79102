"""ESPnet's ``asr_inference`` (the Conformer baseline) with every checkpoint loaded ``weights_only``.

``python -m espnet2_ext.bin.asr_inference`` takes exactly ``python -m espnet2.bin.asr_inference``'s
options; ESPnet's model loading asks for ``weights_only=False``, which is overridden here (see
:func:`espnet2_ext.tasks.safe_loading.weights_only_loads`). ``ESPNET2_EXT_VERBOSE=1`` shows the
traceback of an input error.
"""

from __future__ import annotations

import sys

from espnet2.bin import asr_inference

from espnet2_ext.cli import run_cli
from espnet2_ext.tasks.safe_loading import weights_only_loads


def main(cmd: list[str] | None = None) -> None:
    with weights_only_loads():
        asr_inference.main(cmd)


if __name__ == "__main__":
    sys.exit(run_cli(main))
