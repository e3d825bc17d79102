#!/usr/bin/env bash
# The stage engine shared by every recipe (the role of ESPnet's egs2/TEMPLATE/asr1/asr.sh).
# A recipe's run.sh only sets corpus paths, checkpoints and configs, then calls this script.
#
# Data flows one way: corpus -> Kaldi data dirs -> dumps -> three training phases -> decoding -> scoring -> RESULTS.md
# Every stage is idempotent (a stage whose outputs exist is skipped unless --force true) and every heavy
# step goes through ${train_cmd} / ${cuda_cmd} / ${decode_cmd} with JOB=1:N logs.
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
min() { local a b; a=$1; for b in "$@"; do [ "${b}" -lt "${a}" ] && a=${b}; done; echo "${a}"; }
SECONDS=0

# General configuration
stage=1              # Processes starts from the specified stage.
stop_stage=10        # Processes is stopped at the specified stage.
force=false          # Redo stages whose outputs already exist.
system=llm           # llm (Whisper + ChatGLM3) or conformer (the ESPnet baseline).
arch=decoder_only    # decoder_only (adapter) or encoder_decoder (gated cross-attention).
ngpu=1               # Number of GPUs for training (0 = CPU).
train_num_threads=1  # CPU threads per training process (OMP_NUM_THREADS; raise for CPU training).
nj=8                 # Number of parallel jobs for data preparation and dumping.
inference_nj=8       # Number of parallel jobs for decoding.
gpu_inference=false  # Decode on GPUs.
dumpdir=dump         # Directory for features.
expdir=exp           # Directory for experiments.
datadir=data         # Directory for Kaldi data dirs.

# Data preparation (stage 1)
aishell_dir=         # AISHELL-1 root holding wav/ and transcript/ (i.e. .../data_aishell).
ner_dir=             # Directory with aishell_ner_transcript.{train,dev,test}.txt.
max_duration=30      # Utterances longer than this (seconds) are rejected and listed.
train_set=train      # Training split.
valid_set=dev        # Validation split.
test_sets="test"     # Splits to decode.

# Checkpoints (local paths only)
whisper=             # Whisper checkpoint: a Hugging Face directory or an OpenAI .pt file.
llm=                 # ChatGLM3 checkpoint directory (upstream format or converted), with tokenizer.model.
input_type=encoder_output  # encoder_output (dump the frozen encoder once) or mel (run it every step).
pad_to_30s=true      # Run Whisper on 30-s padded input as the paper does (false: variable length).
dump_batch_size=8    # Utterances per encoder forward when dumping encoder outputs.

# Training (stages 5-7)
phase1_config=       # YAML for phase 1 (short-form ASR).
phase2_config=       # YAML for phase 2 (long-form ASR with history).
phase3_config=       # YAML for phase 3 (long-form ASR 30% + CoT NER 70%).
train_args=          # Extra arguments for every training phase (e.g. "--max_epoch 2").
init_checkpoint=valid.acc.ave.pth  # Which checkpoint of phase N starts phase N+1.
tag=                 # Experiment tag (default: derived from system and arch).

# Conformer baseline
asr_config=          # ESPnet asr_train YAML for the Conformer.
asr_inference_config=  # ESPnet asr_inference YAML.

# Decoding (stage 8)
decode_specs="phase1:asr:0 phase2:asr:1 phase3:ner:0 phase3:ner:1 phase3:ner:2"
                     # phase:task:history triples decoded for each test set.
inference_args=      # Extra arguments for speechllm_inference (e.g. "--beam_size 4").
inference_batch_size=16
inference_model=valid.acc.ave.pth

# Scoring and packing (stages 9-10)
results=RESULTS.md   # Results file written by stage 9.
packdir=             # Where stage 10 writes the packed model (default: ${expdir}/<tag>/packed).

help_message=$(cat << EOF2
Usage: $0 --stage <stage> --stop_stage <stop_stage> [options]

Stages:
  1: data preparation (AISHELL-1 wavs + AISHELL-NER transcripts -> Kaldi data dirs + history lists)
  2: NER-markup normalisation (rejected lines listed)
  3: feature dumps (Whisper log-mel, and the frozen encoder's outputs)
  4: tokenizer / token list checks and shape files
  5: phase 1, short-form ASR            (conformer: ESPnet asr_train)
  6: phase 2, long-form ASR
  7: phase 3, long-form ASR + CoT NER
  8: decoding
  9: scoring into ${results} (and Fig. 2 analysis plots in <expdir>/<system>/analysis)
 10: packing the trained parts

Options (default in brackets):
  --stage, --stop_stage [1, 10]   --force [false]   --system llm|conformer [llm]
  --arch decoder_only|encoder_decoder [decoder_only]
  --ngpu [1] --train_num_threads [1] --nj [8] --inference_nj [8] --gpu_inference [false]
  --aishell_dir, --ner_dir        corpus locations (stage 1)
  --whisper, --llm                local checkpoints
  --input_type encoder_output|mel [encoder_output]   --pad_to_30s [true]
  --phase{1,2,3}_config           training YAMLs   --train_args  extra training args
  --asr_config, --asr_inference_config   Conformer baseline YAMLs
  --decode_specs ["${decode_specs}"]   --inference_args   --inference_batch_size [16]
  --train_set [train] --valid_set [dev] --test_sets ["test"]
  --dumpdir [dump] --expdir [exp] --datadir [data] --tag --results [RESULTS.md] --packdir
EOF2
)

log "$0 $*"
run_args=$(printf '%q ' "$0" "$@")
. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

[ $# -ne 0 ] && { log "${help_message}"; log "Error: unknown positional arguments: $*"; exit 2; }
case "${system}" in llm|conformer) ;; *) log "Error: --system must be llm or conformer"; exit 2;; esac
case "${arch}" in decoder_only|encoder_decoder) ;; *) log "Error: --arch must be decoder_only or encoder_decoder"; exit 2;; esac

[ -z "${tag}" ] && { if [ "${system}" = conformer ]; then tag=conformer; else tag=${arch}; fi; }
sysdir=${expdir}/${tag}
all_sets="${train_set} ${valid_set} ${test_sets}"
all_sets=$(echo "${all_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
feats_name=$([ "${input_type}" = encoder_output ] && echo enc || echo mel)

# stage_done DIR: true when DIR/.done exists and --force is false (idempotent stages).
stage_done() { [ "${force}" = false ] && [ -f "$1/.done" ]; }

require() { local v; for v in "$@"; do [ -n "${!v}" ] || { log "Error: --${v} is required for stage ${cur_stage}"; exit 2; }; done; }

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    cur_stage=1; require aishell_dir ner_dir
    if stage_done "${datadir}/raw"; then
        log "Stage 1: ${datadir}/raw already prepared, skipping"
    else
        log "Stage 1: data preparation from ${aishell_dir} and ${ner_dir}"
        ${train_cmd} "${datadir}/raw/log/prepare.log" \
            python -m espnet2_ext.bin.prepare_aishell_ner \
                --aishell_dir "${aishell_dir}" --ner_dir "${ner_dir}" --out "${datadir}/raw" \
                --splits ${all_sets} --max_duration "${max_duration}"
        tail -n 20 "${datadir}/raw/log/prepare.log" | grep -v '^#' || true
        touch "${datadir}/raw/.done"
    fi
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log "Stage 2: NER-markup normalisation"
    for x in ${all_sets}; do
        src=${datadir}/raw/${x}; dst=${datadir}/${x}
        stage_done "${dst}" && { log "  ${dst} already normalised, skipping"; continue; }
        mkdir -p "${dst}"
        python -m espnet2_ext.bin.normalize_ner --in "${src}/text" --out "${dst}/text" --rejected "${dst}/text.rejected"
        # Keep only the utterances whose text survived normalisation, in every file of the data dir.
        for f in wav.scp utt2spk utt2dur; do
            awk 'NR==FNR {keep[$1]=1; next} ($1 in keep)' "${dst}/text" "${src}/${f}" > "${dst}/${f}"
        done
        awk 'NR==FNR {keep[$1]=1; next} ($1 in keep) {printf "%s", $1; for (i=2;i<=NF;i++) if ($i in keep) printf " %s", $i; print ""}' \
            "${dst}/text" "${src}/history" > "${dst}/history"
        awk '{a[$2]=a[$2]" "$1} END {for (s in a) print s a[s]}' "${dst}/utt2spk" | sort > "${dst}/spk2utt"
        python -m espnet2_ext.bin.validate_data_dir "${dst}"
        touch "${dst}/.done"
    done
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ] && [ "${system}" = llm ]; then
    cur_stage=3; [ "${input_type}" = encoder_output ] && require whisper
    for x in ${all_sets}; do
        out=${dumpdir}/${feats_name}/${x}
        stage_done "${out}" && { log "Stage 3: ${out} already dumped, skipping"; continue; }
        log "Stage 3: dumping ${feats_name} features of ${x} into ${out} (nj=${nj})"
        _nj=$(min "${nj}" "$(wc -l < "${datadir}/${x}/wav.scp")")
        mkdir -p "${out}/split${_nj}" "${out}/log"
        # Contiguous blocks of utterance ids, one per job (keys.1 ... keys.N).
        awk -v nj="${_nj}" -v out="${out}/split${_nj}/keys" 'NR==FNR {n++; next} {print $1 > (out "." (int((FNR - 1) * nj / n) + 1))}' \
            "${datadir}/${x}/wav.scp" "${datadir}/${x}/wav.scp"
        dump_opts=(--n_mels 80)
        [ -n "${whisper}" ] && dump_opts=(--whisper "${whisper}")
        [ "${input_type}" = encoder_output ] && dump_opts+=(--encoder_out --pad_to_30s "${pad_to_30s}" --batch_size "${dump_batch_size}")
        _cmd=${train_cmd}; _gpu=0
        if [ "${input_type}" = encoder_output ] && [ "${ngpu}" -gt 0 ]; then _cmd=${cuda_cmd}; _gpu=1; dump_opts+=(--device cuda); fi
        ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/dump.JOB.log" \
            python -m espnet2_ext.bin.dump_feats --wav_scp "${datadir}/${x}/wav.scp" \
                --key_file "${out}/split${_nj}/keys.JOB" --out_dir "${out}" --name feats.JOB "${dump_opts[@]}"
        for i in $(seq 1 "${_nj}"); do cat "${out}/feats.${i}.scp"; done | sort > "${out}/feats.scp"
        for i in $(seq 1 "${_nj}"); do cat "${out}/feats_shape.${i}"; done | sort > "${out}/feats_shape"
        for i in $(seq 1 "${_nj}"); do [ -f "${out}/bad_utts.${i}" ] && cat "${out}/bad_utts.${i}"; done > "${out}/bad_utts" || true
        log "  ${x}: $(wc -l < "${out}/feats.scp") utterances dumped, $(wc -l < "${out}/bad_utts") rejected (see ${out}/bad_utts)"
        touch "${out}/.done"
    done
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    if [ "${system}" = llm ]; then
        cur_stage=4; require llm
        log "Stage 4: tokenizer and shape files"
        [ -f "${llm}/tokenizer.model" ] || { log "Error: ${llm}/tokenizer.model not found"; exit 1; }
        python -m espnet2_ext.bin.check_tokenizer --tokenizer "${llm}/tokenizer.model" --text "${datadir}/${train_set}/text"
    else
        log "Stage 4: character token list and shape files for the Conformer baseline"
        mkdir -p "${datadir}/token_list/char"
        python -m espnet2_ext.bin.make_char_token_list --text "${datadir}/${train_set}/text" \
            --out "${datadir}/token_list/char/tokens.txt"
        for x in ${all_sets}; do
            awk '{printf "%s %d\n", $1, int($2 * 16000 + 0.5)}' "${datadir}/${x}/utt2dur" > "${datadir}/${x}/speech_shape"
        done
    fi
fi

# train_phase N CONFIG INIT: one training phase through ESPnet's Trainer (resumable).
train_phase() {
    local n=$1 config=$2 init=$3 outdir=${sysdir}/phase$1
    if [ -f "${outdir}/${init_checkpoint}" ] && [ "${force}" = false ]; then
        log "Stage $((n + 4)): ${outdir} already trained, skipping"; return 0
    fi
    [ -n "${config}" ] || { log "Error: --phase${n}_config is required"; exit 2; }
    log "Stage $((n + 4)): phase ${n} training (${config}) -> ${outdir}"
    mkdir -p "${outdir}"
    # The YAML's encoder decides the input: `precomputed` reads the stage-3 encoder outputs,
    # `whisper` runs the frozen encoder on log-mel (--input_type mel) and needs its path.
    local encoder_opts=()
    [ "${input_type}" = mel ] && encoder_opts=(--encoder_conf "path=${whisper}" --encoder_conf "pad_to_30s=${pad_to_30s}")
    local init_opts=()
    [ -n "${init}" ] && init_opts=(--init_param "${init}")
    local _cmd=${cuda_cmd}; [ "${ngpu}" -eq 0 ] && _cmd=${train_cmd}
    # shellcheck disable=SC2086
    ${_cmd} --gpu "${ngpu}" --num_threads "${train_num_threads}" "${outdir}/train.log" \
        env OMP_NUM_THREADS="${train_num_threads}" python -m espnet2_ext.bin.speechllm_train \
            --config "${config}" --ngpu "${ngpu}" --output_dir "${outdir}" --resume true \
            --llm_conf "path=${llm}" --tokenizer_file "${llm}/tokenizer.model" "${encoder_opts[@]}" \
            --train_data_path_and_name_and_type "${dumpdir}/${feats_name}/${train_set}/feats.scp,speech,kaldi_ark" \
            --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${dumpdir}/${feats_name}/${valid_set}/feats.scp,speech,kaldi_ark" \
            --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text" \
            --train_shape_file "${dumpdir}/${feats_name}/${train_set}/feats_shape" \
            --valid_shape_file "${dumpdir}/${feats_name}/${valid_set}/feats_shape" \
            "${init_opts[@]}" ${train_args}
}

if [ "${system}" = llm ]; then
    [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && train_phase 1 "${phase1_config}" ""
    [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ] && train_phase 2 "${phase2_config}" "${sysdir}/phase1/${init_checkpoint}"
    [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ] && train_phase 3 "${phase3_config}" "${sysdir}/phase2/${init_checkpoint}"
elif [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    outdir=${sysdir}/phase1
    if [ -f "${outdir}/${init_checkpoint}" ] && [ "${force}" = false ]; then
        log "Stage 5: ${outdir} already trained, skipping"
    else
        log "Stage 5: Conformer baseline training (${asr_config}) -> ${outdir}"
        mkdir -p "${outdir}"
        _cmd=${cuda_cmd}; [ "${ngpu}" -eq 0 ] && _cmd=${train_cmd}
        # shellcheck disable=SC2086
        ${_cmd} --gpu "${ngpu}" --num_threads "${train_num_threads}" "${outdir}/train.log" \
            env OMP_NUM_THREADS="${train_num_threads}" python -m espnet2.bin.asr_train --config "${asr_config}" --ngpu "${ngpu}" \
                --output_dir "${outdir}" --resume true --token_type char \
                --token_list "${datadir}/token_list/char/tokens.txt" \
                --train_data_path_and_name_and_type "${datadir}/${train_set}/wav.scp,speech,sound" \
                --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text" \
                --valid_data_path_and_name_and_type "${datadir}/${valid_set}/wav.scp,speech,sound" \
                --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text" \
                --train_shape_file "${datadir}/${train_set}/speech_shape" \
                --valid_shape_file "${datadir}/${valid_set}/speech_shape" ${train_args}
    fi
fi

# decode_dir PHASE TASK HISTORY TEST: where one decoding run writes.
decode_dir() { echo "${sysdir}/decode_$1_$2_his$3/$4"; }

if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ]; then
    specs=${decode_specs}; [ "${system}" = conformer ] && specs="phase1:ner:0"
    _cmd=${decode_cmd}; _gpu=0
    [ "${gpu_inference}" = true ] && { _cmd=${cuda_cmd}; _gpu=1; }
    for spec in ${specs}; do
        IFS=: read -r phase task his <<< "${spec}"
        for x in ${test_sets}; do
            out=$(decode_dir "${phase}" "${task}" "${his}" "${x}")
            stage_done "${out}" && { log "Stage 8: ${out} already decoded, skipping"; continue; }
            log "Stage 8: decoding ${x} with ${sysdir}/${phase} (task=${task}, history=${his}) -> ${out}"
            # Long-form decoding follows each speaker's utterances in order, so jobs are split by speaker.
            _nj=$(min "${inference_nj}" "$(wc -l < "${datadir}/${x}/spk2utt")")
            mkdir -p "${out}/split${_nj}" "${out}/log"
            python -m espnet2_ext.bin.split_by_speaker --utt2spk "${datadir}/${x}/utt2spk" --nj "${_nj}" --out "${out}/split${_nj}/keys"
            if [ "${system}" = llm ]; then
                # The trained config knows its encoder: cached outputs need no Whisper path, log-mel input does.
                enc_opts=(); [ "${feats_name}" = mel ] && enc_opts=(--encoder_conf "path=${whisper}")
                # shellcheck disable=SC2086
                ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/decode.JOB.log" \
                    python -m espnet2_ext.bin.speechllm_inference \
                        --model_dir "${sysdir}/${phase}" --model_file "${inference_model}" \
                        "${enc_opts[@]}" --llm_conf "path=${llm}" \
                        --data_path_and_name_and_type "${dumpdir}/${feats_name}/${x}/feats.scp,speech,kaldi_ark" \
                        --history_file "${datadir}/${x}/history" \
                        --key_file "${out}/split${_nj}/keys.JOB" --task "${task}" --history "${his}" \
                        --batch_size "${inference_batch_size}" --ngpu "${_gpu}" --output_dir "${out}/output.JOB" ${inference_args}
            else
                # shellcheck disable=SC2086
                ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/decode.JOB.log" \
                    python -m espnet2.bin.asr_inference --ngpu "${_gpu}" --config "${asr_inference_config}" \
                        --asr_train_config "${sysdir}/${phase}/config.yaml" \
                        --asr_model_file "${sysdir}/${phase}/${inference_model}" \
                        --data_path_and_name_and_type "${datadir}/${x}/wav.scp,speech,sound" \
                        --key_file "${out}/split${_nj}/keys.JOB" --output_dir "${out}/output.JOB" ${inference_args}
                for i in $(seq 1 "${_nj}"); do mv "${out}/output.${i}/1best_recog/text" "${out}/output.${i}/text"; done
            fi
            for i in $(seq 1 "${_nj}"); do cat "${out}/output.${i}/text"; done | sort > "${out}/text"
            touch "${out}/.done"
        done
    done
fi

if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 9 ]; then
    log "Stage 9: scoring into ${results}"
    for d in "${expdir}"/*/decode_*/*/; do
        d=${d%/}; x=${d##*/}
        [ -f "${d}/text" ] || continue
        [ -f "${d}/score/result.json" ] && [ "${force}" = false ] && [ "${d}/score/result.json" -nt "${d}/text" ] && continue
        python -m espnet2_ext.bin.score_ner --ref "${datadir}/${x}/text" --hyp "${d}/text" --out "${d}/score" --name "${d#${expdir}/}"
    done
    # Fig. 2 data: gates of every encoder-decoder phase, speech attention of the decoder-only phase 3 (cheap, idempotent).
    for sys_dir in "${expdir}"/*/; do
        sys_dir=${sys_dir%/}; ana=${sys_dir}/analysis
        [ -f "${sys_dir}/phase3/config.yaml" ] && [ -e "${sys_dir}/phase3/${inference_model}" ] || continue
        [ -f "${ana}/.done" ] && [ "${force}" = false ] && [ "${ana}/.done" -nt "${sys_dir}/phase3/${inference_model}" ] && continue
        x=${test_sets%% *}
        python -m espnet2_ext.bin.analyze_speechllm --model_dir "${sys_dir}"/phase{1,2,3} --model_file "${inference_model}" \
            --out "${ana}" --data "${dumpdir}/${feats_name}/${x}/feats.scp" --history_file "${datadir}/${x}/history" \
            --num_utts 24 > "${ana}.log" 2>&1 || { log "Error: analysis of ${sys_dir} failed, see ${ana}.log"; exit 1; }
        touch "${ana}/.done"
    done
    python -m espnet2_ext.bin.make_results --expdir "${expdir}" --test_sets "${test_sets}" --command "${run_args}" --out "${results}"
    cat "${results}"
fi

if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ] && [ "${system}" = llm ]; then
    outdir=${packdir:-${sysdir}/packed}
    log "Stage 10: packing the trained parts of ${sysdir}/phase3 into ${outdir}"
    python -m espnet2_ext.bin.pack_model --model_dir "${sysdir}/phase3" --model_file "${inference_model}" --out "${outdir}"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
