#!/usr/bin/env bash
# The built-in default job: the mini recipe (egs/mini_aishell_ner/llm1), end to end on CPU.
# Options (--stage, --stop_stage, --systems, --fast, ...) are forwarded to it; see its run.sh.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/egs/mini_aishell_ner/llm1"
exec ./run.sh "$@"
