#!/usr/bin/env bash
# Stage 1 of llm.sh for AISHELL-1 + AISHELL-NER: one Kaldi data dir per split (wav.scp, text with NER
# markup as released, utt2spk, spk2utt, utt2dur, history; rejected.txt lists every id not kept, with why),
# and OUT/deps, the corpus files read (items of utils/stage_stamp.py), so llm.sh redoes stage 1 when any
# of them changes. llm.sh calls it from the recipe directory as
#   local/data.sh --out DATADIR/raw --splits "train dev test" <--local_data_opts>
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${fname}" "${BASH_LINENO[0]}" "${FUNCNAME[1]}" "$*"
}

out=                  # Output root: OUT/<split>/ for each split.
splits="train dev test"  # Splits to prepare (space-separated; among train, dev, test).
aishell_dir=          # AISHELL-1 root holding wav/{train,dev,test}/S*/*.wav and transcript/ (i.e. .../data_aishell).
ner_dir=              # Directory with aishell_ner_transcript.{train,dev,test}.txt (or one aishell_ner_transcript.txt).
max_duration=30       # Utterances longer than this (seconds) are rejected and listed.

help_message="Usage: $0 --out DIR --aishell_dir DIR --ner_dir DIR [--splits \"${splits}\"] [--max_duration ${max_duration}]"
. utils/parse_options.sh
[ $# -eq 0 ] || { log "Error: unknown arguments: $*"; printf '%s\n' "${help_message}" >&2; exit 2; }
for v in out aishell_dir ner_dir; do
    [ -n "${!v}" ] || { log "Error: --${v} is required (the recipe's run.sh passes --aishell_dir and --ner_dir)"; exit 2; }
done
. ./path.sh
. ./cmd.sh

read -ra split_list <<< "${splits}"
mkdir -p "${out}/log"
{
    printf 'file:%s\n' "${aishell_dir}/transcript/aishell_transcript_v0.8.txt" "${ner_dir}/aishell_ner_transcript.txt"
    printf 'stat:%s\n' "${aishell_dir}/wav"
    for x in "${split_list[@]}"; do printf 'file:%s\n' "${ner_dir}/aishell_ner_transcript.${x}.txt"; done
} > "${out}/deps"

log "Preparing ${splits} from ${aishell_dir} and ${ner_dir} into ${out}"
${train_cmd} "${out}/log/prepare.log" \
    python -m espnet2_ext.bin.prepare_aishell_ner --aishell_dir "${aishell_dir}" --ner_dir "${ner_dir}" \
        --out "${out}" --splits "${split_list[@]}" --max_duration "${max_duration}"
grep -v '^#' "${out}/log/prepare.log" | tail -n 20 || true
