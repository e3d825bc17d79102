#!/usr/bin/env bash
# Makes the mini recipe's stand-ins for its two upstream checkpoints, in their upstream formats:
#   EXPDIR/whisper   a Whisper-shaped encoder pretrained with CTC (Hugging Face Whisper directory)
#   EXPDIR/chatglm3  a GLM-shaped LLM with a sentencepiece tokenizer (ChatGLM3's checkpoint layout)
# Each step is skipped when its marker (EXPDIR/<name>.done, holding the config's checksum and the corpus
# path) matches; logs go to EXPDIR/log/<name>.log. Sizes and training settings: the config (YAML).
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
stamp="$(md5sum < "${config}" | cut -d' ' -f1) $(cd "${corpus}" && pwd)"

# build NAME SCRIPT REPORT KEYS...: run local/SCRIPT into EXPDIR/NAME unless done, then print the report's KEYS.
build() {
    local name=$1 script=$2 report=$3
    shift 3
    local out=${expdir}/${name} marker=${expdir}/${name}.done
    if [ -f "${marker}" ] && [ "$(cat "${marker}")" = "${stamp}" ]; then
        log "${out} is up to date (${marker}); skipped"
    else
        rm -rf "${out}" "${marker}"
        log "making ${out} (log: ${expdir}/log/${name}.log)"
        python "${local_dir}/${script}" --corpus "${corpus}" --out "${out}" --config "${config}" \
            > "${expdir}/log/${name}.log" 2>&1 || { log "Error: ${script} failed; see ${expdir}/log/${name}.log"; exit 1; }
        echo "${stamp}" > "${marker}"
    fi
    python - "${out}/${report}" "$@" << 'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print("  " + ", ".join(f"{key}: {report[key]}" for key in sys.argv[2:]))
EOF
}

build whisper pretrain_whisper_ctc.py ctc_report.json dev_ctc_cer steps train_minutes train_utterances characters
build chatglm3 make_tiny_llm.py llm_report.json parameters sentencepiece_pieces padded_vocab_size lm_pretrain
log "stand-ins ready: --whisper ${expdir}/whisper --llm ${expdir}/chatglm3"
