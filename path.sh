# Sourced by every recipe (through a symlink in the recipe directory) and by the tests.
# Sets up the environment built by `make -C tools`; safe to source more than once.
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
export MAIN_ROOT

if [ ! -f "${MAIN_ROOT}/tools/venv/.done" ]; then
    echo "path.sh: ${MAIN_ROOT}/tools/venv is missing or incomplete; run: make -C ${MAIN_ROOT}/tools" >&2
    return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${MAIN_ROOT}/tools/venv/bin/activate"

# Dispatchers (run.pl-style local and Slurm back ends), parse_options.sh, and the stage engine's helpers.
export PATH="${MAIN_ROOT}/utils:${PATH}"
export PYTHONIOENCODING=UTF-8
# Chinese text goes through sort/cut/awk in the stages: a UTF-8 locale keeps them from mangling it,
# while LC_COLLATE=C keeps `sort` byte-ordered, as Kaldi's data directories require.
export LC_ALL=
export LANG=C.UTF-8
export LC_CTYPE=C.UTF-8
export LC_COLLATE=C
# One thread per process by default: jobs are parallelised by the dispatcher (JOB=1:N); raise for training.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
# Weights come from local paths only; never reach out to a model hub.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
# espnet2 imports g2p_en, which downloads NLTK data on import when missing: empty stand-ins stop it (tools/nltk_stub).
export NLTK_DATA=${MAIN_ROOT}/tools/nltk_stub
