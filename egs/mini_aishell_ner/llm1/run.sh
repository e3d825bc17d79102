#!/usr/bin/env bash
# The built-in default: a synthetic Mandarin NER corpus (espeak-ng), the real Whisper-base as the frozen
# encoder (tools/models/whisper-base, from `make -C tools`), a stand-in LLM in ChatGLM3's format, both
# speech-LLM architectures through all three phases, and the ESPnet Conformer baseline, on CPU.
# Runs end to end on 2 cores; ends by printing RESULTS.md.
#   ./run.sh                            # stages 0-10 for every system
#   ./run.sh --stage 3 --stop_stage 7   # dumps through phase 3
#   ./run.sh --fast true                # CI's integration run: a small corpus and few epochs
#   ./run.sh --input_type mel           # the paper's input path: Whisper run on the concatenated log-mel in every
#                                       # step (systems <arch>_mel; the Conformer is shared); slow on CPU
set -euo pipefail

stage=0                 # 0: corpus + stand-in LLM; 1-10: llm.sh stages.
stop_stage=10
systems="decoder_only encoder_decoder conformer"  # what to train, decode and score.
fast=false              # true: small corpus and short training (CI); results are not meaningful then.
corpus=corpus           # Where stage 0 writes the synthetic AISHELL-1-style corpus.
expdir=exp              # Where data dirs, dumps, stand-ins, experiments and RESULTS.md go.
nj=2                    # Parallel jobs for synthesis, dumping and decoding.
input_type=encoder_output  # encoder_output: cached Whisper outputs joined per example; mel: the paper's path.
encoder_dtype=auto      # What stage 3 runs Whisper-base in: auto (bfloat16 where the CPU computes it natively, AVX512-BF16 or AMX: ~2.3x faster dumps, scores of their own within the run-to-run spread, see RESULTS.md; float32 elsewhere), bfloat16 or float32.
frozen_dtype=float32    # The speech-LLM phases' autocast: float32 (the table), bfloat16 (~20% faster steps where native; scores of its own) or auto.

help_message="Usage: $0 [--stage 0] [--stop_stage 10] [--systems \"${systems}\"] [--fast false] [--corpus corpus] [--expdir exp] [--nj 2] [--input_type encoder_output|mel] [--encoder_dtype float32|bfloat16|auto] [--frozen_dtype float32|bfloat16|auto]"
log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) $*"; }
. ./path.sh
. utils/parse_options.sh
SECONDS=0

if [ "${fast}" = true ]; then
    corpus_opts="--num_train 300 --num_dev 30 --num_test 30"
    train_args="--max_epoch 1"
else
    corpus_opts="--num_train 3000 --num_dev 300 --num_test 300"
    train_args=
fi

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
    log "Stage 0: synthetic corpus (${corpus_opts}) and stand-in LLM"
    # shellcheck disable=SC2086
    python local/make_corpus.py --out "${corpus}" --nj "${nj}" ${corpus_opts}
    local/stand_ins.sh "${corpus}" "${expdir}/stand_ins" conf/stand_ins.yaml
fi

. local/llm_opts.sh
common=("${mini_llm_opts[@]}" --input_type "${input_type}"
        --decode_specs "phase1:asr:0 phase3:ner:0 phase3:ner:1 phase3:ner:2")
# system_args SYSTEM: the llm.sh options that select one system (llm.sh derives its configs from conf/);
# the tag is the system's name (+ _mel for --input_type mel) whatever --fast gives --train_args, so RESULTS.md
# rows keep their names.
system_args() {
    local suffix=; [ "${input_type}" = mel ] && suffix=_mel
    if [ "$1" = conformer ]; then
        sys_args=(--system conformer --train_args "${train_args}" --tag conformer)
    else
        sys_args=(--arch "$1" --train_args "${train_args} ${mini_llm_train_args}" --tag "$1${suffix}")
    fi
}

# Scheduling on 2 cores: what a stage needs decides when it starts, so that both cores stay busy.
# Stages 1-2 (data dirs) are shared. The Conformer (stages 4-8) needs no Whisper dumps, so it trains in the
# background while stage 3 dumps them; each speech-LLM system then trains, decodes (stages 5-8) and packs
# (stage 10) in the background too, one CPU thread per process: these tiny models gain almost nothing from
# a second thread. Each background system writes ${expdir}/log/<system>.log; a failure, Ctrl-C or kill
# stops them all (each runs in its own process group). The order of work does not change any result.
set -m
pids=(); names=()
stop_background() { local p; for p in "${pids[@]}"; do kill -TERM -- "-${p}" 2> /dev/null || true; done; }
trap stop_background EXIT
trap 'exit 130' INT TERM
# stages FIRST LAST: llm.sh's --stage/--stop_stage for FIRST..LAST within this run's range (empty: none).
stages() {
    local first=$(( stage > $1 ? stage : $1 )) last=$(( stop_stage < $2 ? stop_stage : $2 ))
    [ ${first} -le ${last} ] && echo "--stage ${first} --stop_stage ${last}" || true
}
# background SYSTEM STAGE_OPTS...: the system's llm.sh runs, one after the other, in the background.
background() {
    local sys=$1 opts; shift
    system_args "${sys}"
    mkdir -p "${expdir}/log"
    log "In the background: ${sys}, $(printf '[%s] ' "$@")(log: ${expdir}/log/${sys}.log)"
    (
        for opts in "$@"; do
            # shellcheck disable=SC2086
            [ -z "${opts}" ] || ./llm.sh "${common[@]}" "${sys_args[@]}" ${opts}
        done
    ) < /dev/null > "${expdir}/log/${sys}.log" 2>&1 &
    pids+=($!); names+=("${sys}")
}
llm_systems=(); conformer=false
for sys in ${systems}; do [ "${sys}" = conformer ] && conformer=true || llm_systems+=("${sys}"); done

if [ -n "$(stages 1 2)" ]; then
    system_args "$(echo ${systems} | cut -d' ' -f1)"
    # shellcheck disable=SC2046
    ./llm.sh "${common[@]}" "${sys_args[@]}" $(stages 1 2)
fi
[ "${conformer}" = false ] || background conformer "$(stages 3 8)"
# Stages 3-4 in the foreground: the first speech-LLM system dumps, the others find the dumps up to date.
if [ -n "$(stages 3 4)" ]; then
    for sys in "${llm_systems[@]}"; do
        system_args "${sys}"
        # shellcheck disable=SC2046
        ./llm.sh "${common[@]}" "${sys_args[@]}" $(stages 3 4)
    done
fi
for sys in "${llm_systems[@]}"; do background "${sys}" "$(stages 5 8)" "$(stages 10 10)"; done
failed=
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then log "${names[$i]}: done"; else failed="${failed} ${names[$i]}"; tail -n 20 "${expdir}/log/${names[$i]}.log"; fi
done
pids=()
[ -z "${failed}" ] || { log "Error: failed in the background:${failed} (see ${expdir}/log/)"; exit 1; }
if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 9 ]; then
    ./llm.sh "${common[@]}" --stage 9 --stop_stage 9
fi
# Every hypothesis of this run's systems in one digest: two runs on one machine print the same one.
if [ ${stop_stage} -ge 8 ]; then
    shopt -s nullglob
    hyps=(); for sys in ${systems}; do system_args "${sys}"; hyps+=("${expdir}/${sys_args[-1]}"/decode_*/*/text); done
    [ ${#hyps[@]} -eq 0 ] || log "Hypotheses digest: $(cat "${hyps[@]}" | sha256sum | cut -c1-16) (${#hyps[@]} decodings; equal across runs on one machine)"
fi
log "Finished in ${SECONDS}s."
