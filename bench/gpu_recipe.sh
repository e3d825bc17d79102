#!/usr/bin/env bash
# The full-size recipe on one NVIDIA GPU, end to end, within 8 minutes (--budget_s): random upstream-format checkpoints
# (ChatGLM3-6B sharded, Whisper-large-v2 HF), a mini corpus through stage 1 and stage 3 (encoder outputs), then
# phase-1 and phase-3 training of both architectures through the recipe's training entry point and ESPnet's
# Trainer with the shipped full-size configs (only paths, max_epoch and log_interval set), ~100 batches each.
# Writes OUT/gpu_train.json: step time, tokens/s, MFU, peak memory next to plan_memory's prediction, the device.
#
#   bench/gpu_recipe.sh [--out bench/results] [--work DIR] [--wheelhouse bench/wheelhouse] [--logs FILE.tgz]
#                       [--budget_s 480] [--iterations 100] [--train_utts 800] [--dev_utts 40] [--speakers 40]
#   bench/gpu_recipe.sh --tiny --out DIR [--work DIR]   # the same on the CPU, tiny shapes: OUT/gpu_train_cpu_tiny.json
#
# A machine without espnet (and with other transformers/peft versions than tools/requirements.txt pins) gets
# them from bench/wheelhouse (bench/make_wheelhouse.sh; git-ignored, carried with the tree): every wheel there
# whose package is missing or at another version is installed with --no-index --no-deps into a temporary dir.
# Work files (~20 GB at full size) go to /dev/shm when it has room, else to ${TMPDIR:-/tmp}; runs' *.pth
# files are deleted after each run (only the logs are needed). A run that would likely end past --budget_s
# seconds (default 480; 0: none) is skipped and reported as such. --logs FILE.tgz: the logs, for taking home.
# Exit status: non-zero when any step failed or was skipped (the report still covers the runs that finished).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tiny=false out=${repo}/bench/results work= wheelhouse=${repo}/bench/wheelhouse logs= budget_s=
iterations= train_utts= dev_utts= speakers=
while [ $# -gt 0 ]; do
    case $1 in
        --tiny) tiny=true; shift ;;
        --out) out=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --wheelhouse) wheelhouse=$2; shift 2 ;;
        --logs) logs=$2; shift 2 ;;
        --budget_s) budget_s=$2; shift 2 ;;
        --iterations) iterations=$2; shift 2 ;;
        --train_utts) train_utts=$2; shift 2 ;;
        --dev_utts) dev_utts=$2; shift 2 ;;
        --speakers) speakers=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_recipe.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "${tiny}" = true ]; then
    iterations=${iterations:-8} train_utts=${train_utts:-100} dev_utts=${dev_utts:-8} speakers=${speakers:-5}
    budget_s=${budget_s:-0}
    result=${out}/gpu_train_cpu_tiny.json
else
    iterations=${iterations:-100} train_utts=${train_utts:-800} dev_utts=${dev_utts:-40} speakers=${speakers:-40}
    budget_s=${budget_s:-480}
    result=${out}/gpu_train.json
fi
if [ -z "${work}" ]; then
    shm_free_gib=$(df -P -BG /dev/shm 2>/dev/null | awk 'NR == 2 { sub("G", "", $4); print $4 }')
    work=${TMPDIR:-/tmp}/gpu_recipe
    if [ "${tiny}" = false ] && [ "${shm_free_gib:-0}" -ge 48 ]; then work=/dev/shm/gpu_recipe; fi
fi
if [ -e "${work}" ] && [ ! -f "${work}/.gpu_recipe" ] && [ -n "$(ls -A "${work}")" ]; then
    echo "gpu_recipe.sh: ${work} is not empty and not an earlier gpu_recipe work dir; give an empty --work" >&2
    exit 2
fi
rm -rf "${work}"
mkdir -p "${work}" "${out}"
touch "${work}/.gpu_recipe"
work=$(cd "${work}" && pwd) out=$(cd "${out}" && pwd)
cd "${repo}"
started=$(date +%s)
log() { echo "$(date '+%H:%M:%S') gpu_recipe: $*"; }

# The recipe's environment (tools/venv) when it is built, else the machine's python3 plus the wheelhouse.
if [ -z "${PYTHON:-}" ]; then
    if [ -f tools/venv/.done ]; then PYTHON=${repo}/tools/venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH=${repo}${PYTHONPATH:+:${PYTHONPATH}}
if [ -d "${wheelhouse}" ]; then
    mapfile -t wheels < <("${PYTHON}" - "${wheelhouse}" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        installed = md.version(re.sub(r"[-_.]+", "-", name))
    except md.PackageNotFoundError:
        installed = None
    if installed != version:
        print(wheel)
EOF
    )
    if [ "${#wheels[@]}" -gt 0 ]; then
        site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_recipe_site.XXXXXX")  # not under /dev/shm, which may be noexec
        trap 'rm -rf "${site}"' EXIT
        log "installing ${#wheels[@]} wheels from ${wheelhouse} into ${site}"
        "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "${site}" "${wheels[@]}"
        export PYTHONPATH=${site}:${PYTHONPATH}
    fi
fi
if ! "${PYTHON}" -c 'import espnet2, kaldiio' 2>/dev/null; then
    echo "gpu_recipe.sh: ${PYTHON} cannot import espnet2 and kaldiio; build tools/venv (make -C tools) or" \
         "bench/wheelhouse (bench/make_wheelhouse.sh) and carry it" >&2
    exit 2
fi
# espnet2 imports g2p_en, which downloads two NLTK archives at import when they are missing; offline that is a
# failed (or hanging) network call in every process. Empty archives of those names satisfy its check.
if [ -z "${NLTK_DATA:-}" ]; then
    export NLTK_DATA=${work}/nltk_data
    "${PYTHON}" - "${NLTK_DATA}" <<'EOF'
import pathlib, sys, zipfile
for path, entry in (("taggers/averaged_perceptron_tagger_eng.zip", "averaged_perceptron_tagger_eng/"),
                    ("corpora/cmudict.zip", "cmudict/")):
    target = pathlib.Path(sys.argv[1]) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr(entry, "")
EOF
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONIOENCODING=UTF-8
export LANG=C.UTF-8 LC_CTYPE=C.UTF-8 LC_COLLATE=C
threads=8; [ "${tiny}" = true ] && threads=2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${threads}}

failed=()
tiny_opt=(); [ "${tiny}" = true ] && tiny_opt=(--tiny)
log "preparing checkpoints, corpus and encoder outputs in ${work} (log: ${work}/prepare.log)"
if ! "${PYTHON}" bench/gpu_recipe_prepare.py --work "${work}" "${tiny_opt[@]}" --iterations "${iterations}" \
        --train_utts "${train_utts}" --dev_utts "${dev_utts}" --speakers "${speakers}" \
        > "${work}/prepare.log" 2>&1; then
    tail -n 30 "${work}/prepare.log" >&2
    echo "gpu_recipe.sh: preparation failed; see ${work}/prepare.log" >&2
    exit 1
fi
log "prepared in $(($(date +%s) - started)) s"

longest=0
while IFS=$'\t' read -r run exp; do
    elapsed=$(($(date +%s) - started))
    if [ "${budget_s}" -gt 0 ] && [ $((elapsed + longest)) -gt "${budget_s}" ]; then
        log "skipping ${run}: ${elapsed} s spent, the longest run took ${longest} s, --budget_s ${budget_s}"
        echo "skipped: ${elapsed} s of --budget_s ${budget_s} spent before it" > "${exp}/skipped"
        failed+=("${run}")
        continue
    fi
    mapfile -t train_args < "${exp}/train_args"
    run_started=$(date +%s)
    log "training ${run} (log: ${exp}/train.log)"
    status=0
    "${PYTHON}" bench/gpu_recipe_train.py "${exp}/peak_memory.json" "${train_args[@]}" \
        < /dev/null > "${exp}/train.log" 2>&1 || status=$?
    echo "${status}" > "${exp}/exit_status"
    if [ "${status}" = 0 ]; then
        log "${run} done"
    else
        tail -n 20 "${exp}/train.log" >&2
        log "${run} FAILED; see ${exp}/train.log"
        failed+=("${run}")
    fi
    find "${exp}" -name '*.pth' -delete
    took=$(($(date +%s) - run_started))
    [ "${took}" -le "${longest}" ] || longest=${took}
done < "${work}/runs.tsv"

"${PYTHON}" bench/gpu_recipe_report.py --work "${work}" --out "${result}" "${tiny_opt[@]}" \
    --total_s "$(($(date +%s) - started))"
log "wrote ${result} ($(($(date +%s) - started)) s in all)"
if [ -n "${logs}" ]; then
    tar -czf "${logs}" -C "${work}" prepare.log prepare.json runs.tsv \
        $(cd "${work}" && ls exp/*/{train_args,train.log,peak_memory.json,config.yaml,exit_status,skipped} 2>/dev/null)
    log "logs in ${logs}"
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_recipe.sh: failed runs: ${failed[*]}" >&2
    exit 1
fi
