#!/usr/bin/env bash
# The stage engine shared by every recipe (the role of ESPnet's egs2/TEMPLATE/asr1/asr.sh).
# A recipe is a directory holding run.sh, conf/ and local/data.sh (its corpus); run.sh passes every
# option here unchanged. `./llm.sh --help` lists the options.
#
# Data flows one way: corpus -> Kaldi data dirs -> dumps -> three training phases -> decoding -> scoring -> RESULTS.md
# Each stage leaves a marker (.done) recording a fingerprint of what it was made from (inputs by content
# or size+mtime, the options that change its output; utils/stage_stamp.py). A rerun skips a stage whose
# fingerprint is unchanged and redoes one whose fingerprint changed, which changes the inputs of the stages
# after it, so they are redone too. Every heavy step goes through ${train_cmd} / ${cuda_cmd} / ${decode_cmd}.
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${fname}" "${BASH_LINENO[0]}" "${FUNCNAME[1]}" "$*"
}
min() { local a b; a=$1; for b in "$@"; do [ "${b}" -lt "${a}" ] && a=${b}; done; echo "${a}"; }
SECONDS=0
run_args=$(printf '%q ' "$0" "$@")

# ==== Options: each variable from here to the end marker is an option (--name VALUE or --name=VALUE) ====
# General configuration
stage=1              # First stage to run.
stop_stage=10        # Last stage to run.
force=false          # Redo the stages in range even when up to date (a training phase restarts from scratch, its old outputs removed).
system=llm           # llm (Whisper + ChatGLM3) or conformer (the ESPnet baseline).
arch=decoder_only    # decoder_only (connector: adapter) or encoder_decoder (connector: cross_attention).
ngpu=1               # Number of GPUs for training (0 = CPU); more than 1: DDP, one process per GPU (torchrun).
num_nodes=1          # Nodes for training (cmd_backend=slurm): one submission, torchrun on each node, --ngpu GPUs each.
gpu_mem=80           # GiB per GPU: plan_memory checks each GPU training phase against it before it starts (0: no check).
train_num_threads=1  # CPU threads per training process (OMP_NUM_THREADS; raise for CPU training).
nj=8                 # Number of parallel jobs for feature dumping.
inference_nj=8       # Number of parallel jobs for decoding (with --gpu_inference true: one GPU each; use the number of GPUs).
gpu_inference=false  # Decode and analyse (stage 8) on GPUs, in bfloat16.
dumpdir=dump         # Directory for features.
expdir=exp           # Directory for experiments.
datadir=data         # Directory for Kaldi data dirs.
# Data preparation (stage 1)
local_data_opts=     # Options for the recipe's local/data.sh, as one shell-quoted string (the recipe's run.sh fills it).
train_set=train      # Training split.
valid_set=dev        # Validation split.
test_sets="test"     # Splits to decode (space-separated).
# Checkpoints (local paths only)
whisper=             # Whisper checkpoint: a Hugging Face directory or an OpenAI .pt file.
llm=                 # ChatGLM3 checkpoint directory (upstream format or converted), with tokenizer.model.
input_type=encoder_output  # encoder_output: dump each utterance's encoder output once, join them per example (fast); mel: the paper's path, Whisper run in every step on the concatenated log-mel.
pad_to_30s=true      # Run Whisper on 30-s padded input as the paper does (false: variable length).
dump_batch_size=8    # Utterances per encoder forward when dumping encoder outputs.
dump_dtype=float16   # How stage 3 stores features: float16 (half the disk) or float32.
encoder_dtype=auto   # What stage 3 runs the frozen encoder in: auto (bfloat16 on GPUs, float32 on CPUs), bfloat16 (also ~2x faster on CPUs with AVX512-BF16/AMX) or float32.
# Training (stages 5-7)
phase1_config=       # YAML for phase 1, short-form ASR (empty: conf/train_<arch>_phase1.yaml).
phase2_config=       # YAML for phase 2, long-form ASR with history (empty: conf/train_<arch>_phase2.yaml).
phase3_config=       # YAML for phase 3, long-form ASR 30% + CoT NER 70% (empty: conf/train_<arch>_phase3.yaml).
train_args=          # Extra arguments for every training phase, shell-quoted (e.g. "--max_epoch 2").
init_checkpoint=valid.acc.ave.pth  # Which checkpoint of phase N starts phase N+1.
phase1_dir=          # A finished phase-1 directory to start phase 2 from instead of training phase 1 (linked as <expdir>/<tag>/phase1; e.g. to compare phase-2/3 settings from one phase 1).
tag=                 # Experiment directory name under expdir (empty: derived, see "Experiment tags" above).
# Conformer baseline
asr_config=          # ESPnet asr_train YAML for the Conformer (empty: conf/train_conformer.yaml).
asr_inference_config=  # ESPnet asr_inference YAML (empty: conf/decode_conformer.yaml).
# Decoding (stage 8)
decode_specs="phase1:asr:0 phase2:asr:1 phase3:ner:0 phase3:ner:1 phase3:ner:2"  # phase:task:history triples decoded for each test set.
inference_args=      # Extra arguments for the decoder, shell-quoted (e.g. "--beam_size 4").
inference_batch_size=16  # Utterances per decoding batch.
inference_model=valid.acc.ave.pth  # Checkpoint of each phase that is decoded, analysed and packed.
# Scoring and packing (stages 9-10)
results=RESULTS.md   # Results file written by stage 9.
packdir=             # Where stage 10 writes the packed model (empty: <expdir>/<tag>/packed).
# ==== End of options ====

help_message="Usage: $0 [--name VALUE | --name=VALUE]...    (run from a recipe directory)

Stages:
  1: data preparation: local/data.sh --out <datadir>/raw --splits \"<train_set> <valid_set> <test_sets>\" <local_data_opts>
     writes one Kaldi data dir per split (wav.scp, text with NER markup, utt2spk, utt2dur, history) and
     <datadir>/raw/deps, the corpus files it read (items of utils/stage_stamp.py), so stage 1 reruns when they change
  2: NER-markup normalisation (rejected lines listed)
  3: feature dumps (Whisper log-mel, and the frozen encoder's outputs)
  4: tokenizer / token list checks and shape files
  5: phase 1, short-form ASR            (conformer: ESPnet asr_train)
  6: phase 2, long-form ASR
  7: phase 3, long-form ASR + CoT NER
  8: decoding (and the Fig. 2 analysis plots of a speech-LLM system in <expdir>/<tag>/analysis)
  9: scoring into <results>
 10: packing the trained parts

Up to date: a stage whose marker records the fingerprint of its current inputs and options is skipped.
A training phase finished with other inputs is retrained from scratch (its old outputs removed); one
started with other inputs and not finished is refused: pass --force true (retrain from scratch) or a
new --tag. Each phase YAML's connector must match --arch.

Experiment tags: <expdir>/<tag> holds one system. The default is the configs' common name without
\"train_\" and \"_phaseN\" (prefixed by the arch when it does not start with it; _mel added for --input_type mel), then --train_args with
\"--\" as \"_\" and characters other than letters, digits and \"_.,+-\" removed: the shipped configs give
decoder_only, encoder_decoder and conformer; --train_args \"--max_epoch 2\" gives decoder_only_max_epoch2.

Options (default in brackets):
$(awk '
    /^# ==== Options/ { on = 1; next }
    /^# ==== End of options/ { on = 0 }
    !on { next }
    /^# / { sub(/^# /, ""); printf "\n%s:\n", $0; next }
    {
        name = $0; sub(/=.*/, "", name)
        value = substr($0, length(name) + 2); comment = ""
        if ((i = index(value, "  #")) > 0) { comment = substr(value, i + 2); value = substr(value, 1, i - 1) }
        sub(/^# */, "", comment); sub(/[ \t]+$/, "", value); gsub(/^"|"$/, "", value)
        printf "  --%-22s [%s] %s\n", name, value, comment
    }' "${BASH_SOURCE[0]}")"

# Options are parsed before path.sh is sourced, so that --help works without tools/venv.
. utils/parse_options.sh

die() { log "Error: $*"; exit 2; }
[ $# -eq 0 ] || die "unknown positional arguments: $* (options are --name VALUE; see --help)"
log "${run_args}"
case "${system}" in llm|conformer) ;; *) die "--system must be llm or conformer, not '${system}'";; esac
case "${arch}" in decoder_only|encoder_decoder) ;; *) die "--arch must be decoder_only or encoder_decoder, not '${arch}'";; esac
case "${input_type}" in encoder_output|mel) ;; *) die "--input_type must be encoder_output or mel, not '${input_type}'";; esac
[[ ${num_nodes} =~ ^[1-9][0-9]*$ ]] || die "--num_nodes must be a positive integer, not '${num_nodes}'"
[ "${num_nodes}" -eq 1 ] || [ "${cmd_backend:-local}" = slurm ] \
    || die "--num_nodes ${num_nodes} needs cmd_backend=slurm (the local backend runs on this machine only)"
case "${dump_dtype}" in float16|float32) ;; *) die "--dump_dtype must be float16 or float32, not '${dump_dtype}'";; esac
for _name in train_set valid_set test_sets; do
    [[ ${!_name} =~ ^[[:space:]]*[A-Za-z0-9_.-]+([[:space:]]+[A-Za-z0-9_.-]+)*[[:space:]]*$ ]] \
        || die "--${_name} '${!_name}': set names are words of letters, digits, '_', '.' and '-'"
done
read -ra decode_spec_list <<< "${decode_specs}"
for _spec in "${decode_spec_list[@]}"; do
    [[ ${_spec} =~ ^phase[123]:(asr|ner):[0-9]+$ ]] || die "--decode_specs: '${_spec}' is not phaseN:asr|ner:HISTORY"
done

# split_words NAME...: the words of each option NAME holding a shell-quoted string, split as the shell would
# (quotes and backslashes honoured, nothing expanded or run), into the array NAME_words.
split_words() {
    local name words pairs=()
    for name; do pairs+=("${name}" "${!name}"); done
    words=$(python3 -I -S -c 'import shlex, sys
for name, value in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        print(f"{name}_words=(" + " ".join(shlex.quote(w) for w in shlex.split(value)) + ")")
    except ValueError as e:
        sys.exit(f"Error: --{name} {value!r} cannot be split into words: {e}")' "${pairs[@]}") || exit 2
    eval "${words}"
}

# Defaults that depend on other options.
for _n in 1 2 3; do
    _v=phase${_n}_config
    [ -n "${!_v}" ] || printf -v "${_v}" '%s' "conf/train_${arch}_phase${_n}.yaml"
done
asr_config=${asr_config:-conf/train_conformer.yaml}
asr_inference_config=${asr_inference_config:-conf/decode_conformer.yaml}

# config_stem FILE: the config's name without directory, extension, "train_" and "phaseN".
config_stem() { local n=${1##*/}; n=${n%.y*ml}; n=${n#train_}; sed -E 's/[_-]?phase[0-9]+//' <<< "${n}"; }
# default_tag: see "Experiment tags" in --help.
default_tag() {
    local stem base=${system}
    if [ "${system}" = conformer ]; then
        stem=$(config_stem "${asr_config}")
    else
        base=${arch}
        local s1 s2 s3
        s1=$(config_stem "${phase1_config}"); s2=$(config_stem "${phase2_config}"); s3=$(config_stem "${phase3_config}")
        stem=${s1}; [ "${s1}" = "${s2}" ] && [ "${s2}" = "${s3}" ] || stem=${s1}-${s2}-${s3}
    fi
    case "${stem}" in "${base}"|"${base}"_*) ;; *) stem=${base}_${stem};; esac
    [ "${system}" = llm ] && [ "${input_type}" = mel ] && stem=${stem}_mel
    printf '%s%s\n' "${stem}" "$(sed -e 's/--/_/g' -e 's/[^A-Za-z0-9_.,+-]//g' <<< "${train_args}")"
}
[ -n "${tag}" ] || tag=$(default_tag)

. ./path.sh
. ./cmd.sh
split_words local_data_opts train_args inference_args

sysdir=${expdir}/${tag}
read -ra all_sets <<< "$(printf '%s\n' ${train_set} ${valid_set} ${test_sets} | awk '!seen[$0]++' | tr '\n' ' ')"
read -ra test_set_list <<< "${test_sets}"
feats_name=$([ "${input_type}" = encoder_output ] && echo enc || echo mel)
in_range() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }
require() { local v; for v in "$@"; do [ -n "${!v}" ] || die "--${v} is required for stage ${cur_stage}"; done; }

# Markers. stamp_check [--force] [--deps FILE] RECORD PENDING ITEM...: 0 when RECORD holds the fingerprint
# of the items; otherwise the new fingerprint is written to PENDING and ${stale} says what changed.
stamp_check() {
    local rc=0
    stale=$(python3 -I -S utils/stage_stamp.py check "$@") || rc=$?
    [ "${rc}" -le 1 ] || { log "Error: utils/stage_stamp.py check $* failed"; exit 1; }
    return "${rc}"
}
# up_to_date MARKER [--deps FILE] ITEM...: whether the stage that MARKER belongs to is up to date (never with
# --force true). When it is not, its old marker is removed (${was_done}: whether there was one) and the new
# fingerprint waits in MARKER.new until mark_done.
up_to_date() {
    local marker=$1 opts=(); shift
    [ "${force}" = true ] && opts+=(--force)
    [ "${1-}" = --deps ] && { opts+=(--deps "$2"); shift 2; }
    stamp_check "${opts[@]}" "${marker}" "${marker}.new" "$@" && return 0
    was_done=false; [ -f "${marker}" ] && was_done=true
    rm -f "${marker}"
    return 1
}
# mark_done MARKER [--deps FILE]: the stage succeeded; record what it was made from.
mark_done() { python3 -I -S utils/stage_stamp.py commit "$1" "$1.new" "${@:2}"; }
# clean_dir DIR: empty DIR (our own output directory) before redoing it, keeping the pending marker.
clean_dir() { mkdir -p "$1"; find "$1" -mindepth 1 -maxdepth 1 ! -name '.done.new' -exec rm -rf {} +; }

# The connector each architecture's YAMLs must use.
case "${arch}" in decoder_only) connector=adapter;; encoder_decoder) connector=cross_attention;; esac
if [ "${system}" = llm ]; then
    for _n in 1 2 3; do
        in_range $((_n + 4)) || continue
        _v=phase${_n}_config
        [ -f "${!_v}" ] || die "--${_v} ${!_v} not found"
        _got=$(sed -nE 's/^connector:[[:space:]]*["'\'']?([A-Za-z0-9_]*).*/\1/p' "${!_v}" | head -n 1)
        [ "${_got}" = "${connector}" ] || die "${!_v} (phase ${_n}) has connector: ${_got:-<none>}, but --arch ${arch} needs connector: ${connector}; pass --arch or --${_v} to match"
    done
fi

if in_range 1; then
    raw=${datadir}/raw
    [ -f local/data.sh ] || die "$(pwd)/local/data.sh not found: a recipe prepares its corpus there (see egs/aishell_ner/llm1/local/data.sh)"
    if up_to_date "${raw}/.done" --deps "${raw}/deps" file:local/data.sh \
            "opt:local_data_opts=${local_data_opts}" "opt:splits=${all_sets[*]}"; then
        log "Stage 1: ${raw} is up to date, skipping"
    else
        log "Stage 1: data preparation through local/data.sh into ${raw} (${stale})"
        mkdir -p "${raw}"
        local/data.sh --out "${raw}" --splits "${all_sets[*]}" "${local_data_opts_words[@]}"
        mark_done "${raw}/.done" --deps "${raw}/deps"
    fi
fi

if in_range 2; then
    for x in "${all_sets[@]}"; do
        src=${datadir}/raw/${x}; dst=${datadir}/${x}
        if up_to_date "${dst}/.done" "file:${src}/text" "file:${src}/wav.scp" "file:${src}/utt2spk" \
                "file:${src}/utt2dur" "file:${src}/history"; then
            log "Stage 2: ${dst} is up to date, skipping"; continue
        fi
        log "Stage 2: NER-markup normalisation of ${src} into ${dst} (${stale})"
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
        mark_done "${dst}/.done"
    done
fi

if in_range 3 && [ "${system}" = llm ]; then
    cur_stage=3; [ "${input_type}" = encoder_output ] && require whisper
    for x in "${all_sets[@]}"; do
        out=${dumpdir}/${feats_name}/${x}
        items=("scp:${datadir}/${x}/wav.scp" "opt:input_type=${input_type}" "stat:${whisper}" "opt:dump_dtype=${dump_dtype}")
        [ "${input_type}" = encoder_output ] && items+=("opt:pad_to_30s=${pad_to_30s}" "opt:encoder_dtype=${encoder_dtype}")
        if up_to_date "${out}/.done" "${items[@]}"; then log "Stage 3: ${out} is up to date, skipping"; continue; fi
        log "Stage 3: dumping ${feats_name} features of ${x} into ${out} (nj=${nj}; ${stale})"
        clean_dir "${out}"
        _nj=$(min "${nj}" "$(wc -l < "${datadir}/${x}/wav.scp")")
        mkdir -p "${out}/split${_nj}" "${out}/log"
        # Contiguous blocks of utterance ids, one per job (keys.1 ... keys.N).
        keys=${out}/split${_nj}/keys nj=${_nj} awk 'NR==FNR {n++; next} {print $1 > (ENVIRON["keys"] "." (int((FNR - 1) * ENVIRON["nj"] / n) + 1))}' \
            "${datadir}/${x}/wav.scp" "${datadir}/${x}/wav.scp"
        dump_opts=(--n_mels 80)
        [ -n "${whisper}" ] && dump_opts=(--whisper "${whisper}")
        dump_opts+=(--dump_dtype "${dump_dtype}")
        [ "${input_type}" = encoder_output ] && dump_opts+=(--encoder_out --pad_to_30s "${pad_to_30s}" --batch_size "${dump_batch_size}" --dtype "${encoder_dtype}")
        _cmd=${train_cmd}; _gpu=0
        if [ "${input_type}" = encoder_output ] && [ "${ngpu}" -gt 0 ]; then _cmd=${cuda_cmd}; _gpu=1; dump_opts+=(--device cuda); fi
        ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/dump.JOB.log" \
            python -m espnet2_ext.bin.dump_feats --wav_scp "${datadir}/${x}/wav.scp" \
                --key_file "${out}/split${_nj}/keys.JOB" --out_dir "${out}" --name feats.JOB "${dump_opts[@]}"
        for i in $(seq 1 "${_nj}"); do cat "${out}/feats.${i}.scp"; done | sort > "${out}/feats.scp"
        for i in $(seq 1 "${_nj}"); do cat "${out}/feats_shape.${i}"; done | sort > "${out}/feats_shape"
        for i in $(seq 1 "${_nj}"); do [ -f "${out}/bad_utts.${i}" ] && cat "${out}/bad_utts.${i}"; done > "${out}/bad_utts" || true
        python -m espnet2_ext.bin.check_feats "${out}/feats.scp"  # one dtype across the jobs' archives
        log "  ${x}: $(wc -l < "${out}/feats.scp") utterances dumped, $(wc -l < "${out}/bad_utts") rejected (see ${out}/bad_utts)"
        mark_done "${out}/.done"
    done
fi

if in_range 4; then
    cur_stage=4
    if [ "${system}" = llm ]; then
        require llm
        marker=${datadir}/${train_set}/.tokenizer_checked
        if up_to_date "${marker}" "file:${llm}/tokenizer.model" "file:${datadir}/${train_set}/text"; then
            log "Stage 4: tokenizer check of ${datadir}/${train_set}/text is up to date, skipping"
        else
            log "Stage 4: tokenizer check (${stale})"
            [ -f "${llm}/tokenizer.model" ] || die "${llm}/tokenizer.model not found"
            python -m espnet2_ext.bin.check_tokenizer --tokenizer "${llm}/tokenizer.model" --text "${datadir}/${train_set}/text"
            mark_done "${marker}"
        fi
    else
        tokens=${datadir}/token_list/char
        items=("file:${datadir}/${train_set}/text")
        for x in "${all_sets[@]}"; do items+=("file:${datadir}/${x}/utt2dur"); done
        if up_to_date "${tokens}/.done" "${items[@]}"; then
            log "Stage 4: ${tokens} and the speech_shape files are up to date, skipping"
        else
            log "Stage 4: character token list and shape files for the Conformer baseline (${stale})"
            mkdir -p "${tokens}"
            python -m espnet2_ext.bin.make_char_token_list --text "${datadir}/${train_set}/text" --out "${tokens}/tokens.txt"
            for x in "${all_sets[@]}"; do
                awk '{printf "%s %d\n", $1, int($2 * 16000 + 0.5)}' "${datadir}/${x}/utt2dur" > "${datadir}/${x}/speech_shape"
            done
            mark_done "${tokens}/.done"
        fi
    fi
fi

# has_training_state DIR: ESPnet has saved a checkpoint there (it would resume from it).
has_training_state() {
    local f
    [ -e "$1/checkpoint.pth" ] && return 0
    for f in "$1"/*epoch.pth; do [ -e "${f}" ] && return 0; done
    return 1
}
# start_training STAGE OUTDIR ITEM...: sets ${train_now}: false when OUTDIR is up to date, true when it must be
# trained (it is then ready: new, emptied, or resumable with the same inputs); exits when it cannot be resumed safely.
start_training() {
    local st=$1 outdir=$2; shift 2
    train_now=false
    if up_to_date "${outdir}/.done" "$@"; then log "Stage ${st}: ${outdir} is up to date, skipping"; return 0; fi
    train_now=true
    if [ "${force}" = true ]; then
        log "Stage ${st}: --force true: old outputs of ${outdir} removed, training from scratch"
        clean_dir "${outdir}"
    elif [ "${was_done}" = true ]; then
        log "Stage ${st}: ${outdir} was trained from other inputs: old outputs removed, training from scratch"
        clean_dir "${outdir}"
    elif has_training_state "${outdir}"; then
        if [ -f "${outdir}/.started" ] && stamp_check "${outdir}/.started" "${outdir}/.done.new" "$@"; then
            stale="resuming: started with the same inputs"
        else
            [ -f "${outdir}/.started" ] || stale="no record of what it was started with"
            die "${outdir} was started with other inputs and not finished (${stale}); pass --force true to train it from scratch (its outputs are removed) or a new --tag"
        fi
    fi
    mkdir -p "${outdir}"
    cp "${outdir}/.done.new" "${outdir}/.started"
}
# finish_training OUTDIR: the phase finished; record what it was made from.
finish_training() { mark_done "$1/.done"; rm -f "$1/.started"; }

# train_phase N CONFIG INIT: one training phase through ESPnet's Trainer.
train_phase() {
    local n=$1 config=$2 init=$3 outdir=${sysdir}/phase$1 st=$(($1 + 4))
    local feats=${dumpdir}/${feats_name}
    local items=("file:${config}" "opt:train_args=${train_args}" "opt:input_type=${input_type}" "stat:${llm}"
                 "file:${datadir}/${train_set}/text" "file:${datadir}/${valid_set}/text"
                 "stat:${feats}/${train_set}" "stat:${feats}/${valid_set}")
    [ "${input_type}" = mel ] && items+=("stat:${whisper}" "opt:pad_to_30s=${pad_to_30s}")
    [ -n "${init}" ] && items+=("stat:${init}")
    start_training "${st}" "${outdir}" "${items[@]}"
    [ "${train_now}" = true ] || return 0
    [ -z "${init}" ] || [ -e "${init}" ] || die "${init} not found: train phase $((n - 1)) first (stage $((st - 1)))"
    log "Stage ${st}: phase ${n} training (${config}) -> ${outdir} (${stale})"
    # --input_type decides the encoder: the YAML's `precomputed` reads the stage-3 encoder outputs;
    # mel replaces it by `whisper`, the frozen encoder run in every step on the concatenated log-mel.
    local encoder_opts=()
    [ "${input_type}" = mel ] && encoder_opts=(--encoder whisper --encoder_conf "path=${whisper}" --encoder_conf "pad_to_30s=${pad_to_30s}")
    local init_opts=()
    [ -n "${init}" ] && init_opts=(--init_param "${init}")
    if [ "${ngpu}" -gt 0 ] && [ "${gpu_mem}" != 0 ]; then  # stop here, not after loading 12 GB, when it cannot fit
        local plan_opts=(--config "${config}" --llm_config "${llm}" --gpu_mem "${gpu_mem}" --ngpu "${ngpu}" --num_nodes "${num_nodes}")
        [ "${input_type}" = mel ] && plan_opts+=(--whisper_config "${whisper}" --encoder whisper)
        python -m espnet2_ext.bin.plan_memory "${plan_opts[@]}" --check "${train_args_words[@]}" > "${outdir}/memory_plan.json" \
            || die "phase ${n}: ${config} does not fit --gpu_mem ${gpu_mem} GiB per GPU (plan_memory's line above names the knobs)"
        log "Phase ${n}: predicted peak $(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_gib"])' "${outdir}/memory_plan.json") GiB per GPU (${outdir}/memory_plan.json)"
    fi
    # Several processes (GPUs, nodes): DDP through torchrun, one process per GPU (never DataParallel);
    # ESPnet reads RANK/LOCAL_RANK/WORLD_SIZE. The dispatcher runs the command once per node.
    local launch=(python) dist_opts=(--ngpu "${ngpu}") node_opts=()
    if [ "${ngpu}" -gt 1 ] || [ "${num_nodes}" -gt 1 ]; then
        local backend=nccl; [ "${ngpu}" -eq 0 ] && backend=gloo
        launch=(python utils/ddp_launch.py --nproc_per_node "$((ngpu > 0 ? ngpu : 1))")
        dist_opts=(--ngpu "$((ngpu > 0 ? 1 : 0))" --multiprocessing_distributed false --dist_backend "${backend}")
    fi
    [ "${num_nodes}" -gt 1 ] && node_opts=(--num_nodes "${num_nodes}")
    local _cmd=${cuda_cmd}; [ "${ngpu}" -eq 0 ] && _cmd=${train_cmd}
    ${_cmd} --gpu "${ngpu}" "${node_opts[@]}" --num_threads "${train_num_threads}" "${outdir}/train.log" \
        env OMP_NUM_THREADS="${train_num_threads}" "${launch[@]}" -m espnet2_ext.bin.speechllm_train \
            --config "${config}" "${dist_opts[@]}" --output_dir "${outdir}" --resume true \
            --llm_conf "path=${llm}" --tokenizer_file "${llm}/tokenizer.model" "${encoder_opts[@]}" \
            --train_data_path_and_name_and_type "${feats}/${train_set}/feats.scp,speech,kaldi_ark" \
            --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${feats}/${valid_set}/feats.scp,speech,kaldi_ark" \
            --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text" \
            --train_shape_file "${feats}/${train_set}/feats_shape" \
            --valid_shape_file "${feats}/${valid_set}/feats_shape" \
            "${init_opts[@]}" "${train_args_words[@]}"
    finish_training "${outdir}"
}

if [ "${system}" = llm ] && [ -n "${phase1_dir}" ] && { in_range 5 || in_range 6 || in_range 7; }; then
    [ -e "${phase1_dir}/${init_checkpoint}" ] || die "--phase1_dir ${phase1_dir} has no ${init_checkpoint}: train that phase 1 first"
    target=$(readlink -f "${phase1_dir}")
    if [ -e "${sysdir}/phase1" ] && [ "$(readlink -f "${sysdir}/phase1")" != "${target}" ]; then
        die "${sysdir}/phase1 exists and is not ${phase1_dir}: use another --tag"
    fi
    mkdir -p "${sysdir}"; ln -sfn "${target}" "${sysdir}/phase1"
    log "Stage 5: phase 1 taken from ${phase1_dir} (linked as ${sysdir}/phase1)"
fi
if [ "${system}" = llm ]; then
    in_range 5 && [ -z "${phase1_dir}" ] && train_phase 1 "${phase1_config}" ""
    in_range 6 && train_phase 2 "${phase2_config}" "${sysdir}/phase1/${init_checkpoint}"
    in_range 7 && train_phase 3 "${phase3_config}" "${sysdir}/phase2/${init_checkpoint}"
elif in_range 5; then
    outdir=${sysdir}/phase1
    items=("file:${asr_config}" "opt:train_args=${train_args}" "file:${datadir}/token_list/char/tokens.txt")
    for x in "${train_set}" "${valid_set}"; do
        items+=("scp:${datadir}/${x}/wav.scp" "file:${datadir}/${x}/text" "file:${datadir}/${x}/speech_shape")
    done
    start_training 5 "${outdir}" "${items[@]}"
    if [ "${train_now}" = true ]; then
        log "Stage 5: Conformer baseline training (${asr_config}) -> ${outdir} (${stale})"
        _cmd=${cuda_cmd}; [ "${ngpu}" -eq 0 ] && _cmd=${train_cmd}
        ${_cmd} --gpu "${ngpu}" --num_threads "${train_num_threads}" "${outdir}/train.log" \
            env OMP_NUM_THREADS="${train_num_threads}" python -m espnet2_ext.bin.asr_train --config "${asr_config}" --ngpu "${ngpu}" \
                --multiprocessing_distributed "$([ "${ngpu}" -gt 1 ] && echo true || echo false)" \
                --output_dir "${outdir}" --resume true --token_type char \
                --token_list "${datadir}/token_list/char/tokens.txt" \
                --train_data_path_and_name_and_type "${datadir}/${train_set}/wav.scp,speech,sound" \
                --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text" \
                --valid_data_path_and_name_and_type "${datadir}/${valid_set}/wav.scp,speech,sound" \
                --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text" \
                --train_shape_file "${datadir}/${train_set}/speech_shape" \
                --valid_shape_file "${datadir}/${valid_set}/speech_shape" "${train_args_words[@]}"
        finish_training "${outdir}"
    fi
fi

# decode_dir PHASE TASK HISTORY TEST: where one decoding run writes.
decode_dir() { echo "${sysdir}/decode_$1_$2_his$3/$4"; }

if in_range 8; then
    specs=("${decode_spec_list[@]}"); [ "${system}" = conformer ] && specs=(phase1:ner:0)
    _cmd=${decode_cmd}; _gpu=0
    [ "${gpu_inference}" = true ] && { _cmd=${cuda_cmd}; _gpu=1; }
    for spec in "${specs[@]}"; do
        IFS=: read -r phase task his <<< "${spec}"
        model=${sysdir}/${phase}/${inference_model}
        for x in "${test_set_list[@]}"; do
            out=$(decode_dir "${phase}" "${task}" "${his}" "${x}")
            # The model file's identity: a retrained model is decoded again.
            items=("stat:${model}" "file:${sysdir}/${phase}/config.yaml" "opt:inference_args=${inference_args}"
                   "file:${datadir}/${x}/utt2spk")
            if [ "${system}" = llm ]; then
                items+=("stat:${llm}" "stat:${dumpdir}/${feats_name}/${x}" "file:${datadir}/${x}/history")
                [ "${feats_name}" = mel ] && items+=("stat:${whisper}")
            else
                items+=("file:${asr_inference_config}" "scp:${datadir}/${x}/wav.scp")
            fi
            if up_to_date "${out}/.done" "${items[@]}"; then log "Stage 8: ${out} is up to date, skipping"; continue; fi
            [ -e "${model}" ] || die "${model} not found: train ${sysdir}/${phase} first"
            log "Stage 8: decoding ${x} with ${sysdir}/${phase} (task=${task}, history=${his}) -> ${out} (${stale})"
            clean_dir "${out}"
            # Long-form decoding follows each speaker's utterances in order, so jobs are split by speaker.
            _nj=$(min "${inference_nj}" "$(wc -l < "${datadir}/${x}/spk2utt")")
            mkdir -p "${out}/split${_nj}" "${out}/log"
            python -m espnet2_ext.bin.split_by_speaker --utt2spk "${datadir}/${x}/utt2spk" --nj "${_nj}" --out "${out}/split${_nj}/keys"
            if [ "${system}" = llm ]; then
                # The trained config knows its encoder: cached outputs need no Whisper path, log-mel input does.
                enc_opts=(); [ "${feats_name}" = mel ] && enc_opts=(--encoder_conf "path=${whisper}")
                ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/decode.JOB.log" \
                    python -m espnet2_ext.bin.speechllm_inference \
                        --model_dir "${sysdir}/${phase}" --model_file "${inference_model}" \
                        "${enc_opts[@]}" --llm_conf "path=${llm}" \
                        --data_path_and_name_and_type "${dumpdir}/${feats_name}/${x}/feats.scp,speech,kaldi_ark" \
                        --history_file "${datadir}/${x}/history" \
                        --key_file "${out}/split${_nj}/keys.JOB" --task "${task}" --history "${his}" \
                        --batch_size "${inference_batch_size}" --ngpu "${_gpu}" --output_dir "${out}/output.JOB" \
                        "${inference_args_words[@]}"
            else
                ${_cmd} --gpu "${_gpu}" JOB=1:"${_nj}" "${out}/log/decode.JOB.log" \
                    python -m espnet2_ext.bin.asr_inference --ngpu "${_gpu}" --config "${asr_inference_config}" \
                        --asr_train_config "${sysdir}/${phase}/config.yaml" \
                        --asr_model_file "${model}" \
                        --data_path_and_name_and_type "${datadir}/${x}/wav.scp,speech,sound" \
                        --key_file "${out}/split${_nj}/keys.JOB" --output_dir "${out}/output.JOB" "${inference_args_words[@]}"
                for i in $(seq 1 "${_nj}"); do mv "${out}/output.${i}/1best_recog/text" "${out}/output.${i}/text"; done
            fi
            for i in $(seq 1 "${_nj}"); do cat "${out}/output.${i}/text"; done | sort > "${out}/text"
            mark_done "${out}/.done"
        done
    done
    # Fig. 2 data of this system (gates of every encoder-decoder phase, speech attention of the decoder-only
    # phase 3), made here with the decodings rather than in stage 9, so that systems run side by side make theirs
    # side by side.
    x=${test_set_list[0]}; ana=${sysdir}/analysis
    if [ "${system}" = llm ] && [ -f "${sysdir}/phase3/config.yaml" ] && [ -e "${sysdir}/phase3/${inference_model}" ]; then
        # The system's own input: log-mel for one trained with --input_type mel (encoder: whisper).
        sys_feats=${dumpdir}/enc/${x}; grep -q '^encoder: whisper' "${sysdir}/phase3/config.yaml" && sys_feats=${dumpdir}/mel/${x}
        items=("stat:${sys_feats}" "file:${datadir}/${x}/history")
        for p in 1 2 3; do items+=("stat:${sysdir}/phase${p}/${inference_model}" "file:${sysdir}/phase${p}/config.yaml"); done
        if up_to_date "${ana}/.done" "${items[@]}"; then
            log "Stage 8: ${ana} is up to date, skipping"
        else
            log "Stage 8: Fig. 2 analysis of ${sysdir} -> ${ana} (${stale})"
            mkdir -p "${ana}"
            ${_cmd} --gpu "${_gpu}" "${ana}.log" \
                python -m espnet2_ext.bin.analyze_speechllm --model_dir "${sysdir}"/phase{1,2,3} --model_file "${inference_model}" \
                    --out "${ana}" --data "${sys_feats}/feats.scp" --history_file "${datadir}/${x}/history" \
                    --num_utts 24 --ngpu "${_gpu}" || die "analysis of ${sysdir} failed, see ${ana}.log"
            mark_done "${ana}/.done"
        fi
    fi
fi

if in_range 9; then
    log "Stage 9: scoring into ${results}"
    # Every system's decodings; a decoding is rescored when its hypotheses or its reference changed.
    for d in "${expdir}"/*/decode_*/*/; do
        d=${d%/}; x=${d##*/}
        [ -f "${d}/text" ] || continue
        up_to_date "${d}/score/.done" "file:${datadir}/${x}/text" "file:${d}/text" && continue
        python -m espnet2_ext.bin.score_ner --ref "${datadir}/${x}/text" --hyp "${d}/text" --out "${d}/score" \
            --name "${d#"${expdir}"/}"
        mark_done "${d}/score/.done"
    done
    python -m espnet2_ext.bin.make_results --expdir "${expdir}" --test_sets "${test_set_list[*]}" --command "${run_args}" --out "${results}"
    cat "${results}"
fi

if in_range 10 && [ "${system}" = llm ]; then
    outdir=${packdir:-${sysdir}/packed}
    if up_to_date "${outdir}/.done" "stat:${sysdir}/phase3/${inference_model}" "file:${sysdir}/phase3/config.yaml" "opt:pad_to_30s=${pad_to_30s}"; then
        log "Stage 10: ${outdir} is up to date, skipping"
    else
        log "Stage 10: packing the trained parts of ${sysdir}/phase3 into ${outdir} (${stale})"
        python -m espnet2_ext.bin.pack_model --model_dir "${sysdir}/phase3" --model_file "${inference_model}" --out "${outdir}" --pad_to_30s "${pad_to_30s}"
        mark_done "${outdir}/.done"
    fi
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
