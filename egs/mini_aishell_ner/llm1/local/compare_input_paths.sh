#!/usr/bin/env bash
# The paper's input path (--input_type mel: Whisper run in every step on the concatenated log-mel of the
# history and current utterance) against the cached one (each utterance's encoder output dumped once, joined
# per example), for both architectures, after a finished ./run.sh. Both paths start from that run's phase-1
# model (phase 1 here is single utterances, where the two paths compute the same speech tokens; a test checks
# it) and train phases 2 and 3 for --epochs epochs each, far fewer than the main systems: on 2 CPU cores one
# epoch of phase 2 or 3 costs ~15 min of Whisper forward passes on the mel path. Systems:
# <arch>_p23ep<epochs> (cached) and <arch>_p23ep<epochs>_mel; their rows join RESULTS.md.
#   local/compare_input_paths.sh [--epochs 1] [--archs "decoder_only encoder_decoder"]
set -euo pipefail

epochs=1
archs="decoder_only encoder_decoder"
corpus=corpus
expdir=exp
nj=2
dtype=auto
help_message="Usage: $0 [--epochs 1] [--archs \"${archs}\"] [--corpus corpus] [--expdir exp] [--nj 2] [--dtype auto]"
log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) $*"; }
. ./path.sh
. utils/parse_options.sh
encoder_dtype=${dtype} frozen_dtype=${dtype}
. local/llm_opts.sh
SECONDS=0

for arch in ${archs}; do
    [ -e "${expdir}/${arch}/phase1/valid.acc.ave.pth" ] || { log "Error: run ./run.sh first (${expdir}/${arch}/phase1)"; exit 1; }
done
specs="phase3:ner:0 phase3:ner:1 phase3:ner:2"
opts() {  # opts ARCH INPUT_TYPE: the name (sys_name) and llm.sh options (sys_opts) of one comparison system
    local suffix=; [ "$2" = mel ] && suffix=_mel
    sys_name=$1_p23ep${epochs}${suffix}
    sys_opts=("${mini_llm_opts[@]}" --arch "$1" --input_type "$2" --tag "${sys_name}"
              --phase1_dir "${expdir}/$1/phase1" --train_args "--max_epoch ${epochs} ${mini_llm_train_args}" --decode_specs "${specs}")
}
# Log-mel dumps (stage 3) and token checks (stage 4), shared by the mel systems: once, before they train.
opts decoder_only mel
./llm.sh "${sys_opts[@]}" --stage 3 --stop_stage 4
mkdir -p "${expdir}/log"
pids=() names=()
for input_type in mel encoder_output; do  # the slow mel systems first, side by side
    for arch in ${archs}; do
        opts "${arch}" "${input_type}"
        log "Stages 5-8 of ${sys_name} (log: ${expdir}/log/${sys_name}.log)"
        ./llm.sh "${sys_opts[@]}" --stage 5 --stop_stage 8 > "${expdir}/log/${sys_name}.log" 2>&1 &
        pids+=($!); names+=("${sys_name}")
    done
    failed=
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed="${failed} ${names[$i]}"; done
    [ -z "${failed}" ] || { log "Error: failed:${failed} (see ${expdir}/log/)"; exit 1; }
    pids=() names=()
done
opts decoder_only encoder_output
./llm.sh "${sys_opts[@]}" --stage 9 --stop_stage 9
log "Finished in ${SECONDS}s."
