#!/usr/bin/env bash
# Makes the mini recipe's stand-in for ChatGLM3-6B, in its upstream format:
#   EXPDIR/chatglm3  a GLM-shaped LLM with a sentencepiece tokenizer (ChatGLM3's checkpoint layout)
# (its Whisper is the real Whisper-base of tools/models/whisper-base, from `make -C tools`).
# Skipped when its marker (EXPDIR/chatglm3.done: a checksum of what it depends on, and the corpus path)
# matches; the log goes to EXPDIR/log/chatglm3.log. Sizes and training settings: the config (YAML).
#
# Usage: local/stand_ins.sh CORPUS EXPDIR [CONFIG]     (run from egs/mini_aishell_ner/llm1)
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "Usage: $0 CORPUS EXPDIR [CONFIG (default: conf/stand_ins.yaml)]" >&2
    exit 1
fi
corpus=$1
expdir=$2
config=${3:-conf/stand_ins.yaml}
local_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck disable=SC1091
. "${local_dir}/../../../../path.sh"

for f in "${config}" "${corpus}/data_aishell/transcript/aishell_transcript_v0.8.txt"; do
    [ -f "${f}" ] || { log "Error: ${f} not found"; exit 1; }
done
mkdir -p "${expdir}/log"
# What the LLM depends on: the config, the maker's code, the corpus (its path and, when make_corpus.py
# made it, the settings in its .done marker).
stamp="$({ cat "${config}" "${local_dir}/make_tiny_llm.py"; cat "${corpus}/.done" 2> /dev/null || true; } | md5sum | cut -d' ' -f1) $(cd "${corpus}" && pwd)"

out=${expdir}/chatglm3
marker=${expdir}/chatglm3.done
if [ -f "${marker}" ] && [ "$(cat "${marker}")" = "${stamp}" ]; then
    log "${out} is up to date (${marker}); skipped"
else
    rm -rf "${out}" "${marker}"
    log "making ${out} (log: ${expdir}/log/chatglm3.log)"
    python "${local_dir}/make_tiny_llm.py" --corpus "${corpus}" --out "${out}" --config "${config}" \
        > "${expdir}/log/chatglm3.log" 2>&1 || { log "Error: make_tiny_llm.py failed; see ${expdir}/log/chatglm3.log"; exit 1; }
    echo "${stamp}" > "${marker}"
fi
python - "${out}/llm_report.json" << 'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
keys = ("parameters", "sentencepiece_pieces", "padded_vocab_size", "lm_pretrain")
print("  " + ", ".join(f"{key}: {report[key]}" for key in keys))
EOF
log "stand-in ready: --llm ${out}"
