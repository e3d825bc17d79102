#!/usr/bin/env bash
# Download the wheels bench/gpu_recipe.sh installs on an offline GPU machine into bench/wheelhouse (git-ignored;
# carried with the tree, e.g. the device tool's `carry: ["bench/wheelhouse"]`). About 27 MB.
#
#   bench/make_wheelhouse.sh [DEST]     # DEST defaults to bench/wheelhouse; DEVICE_PYTHON=3.12 by default
#
# The list: every distribution the training path imports (espnet2's task, trainer and preprocessor, which pulls
# in espnet2.text: g2p_en, jamo, jaconv, tacotron_cleaner -> inflect -> pydantic; librosa -> soxr, soundfile -> cffi;
# kaldiio, typeguard, humanfriendly, torch_complex; traced by running the tiny training) that the device image
# lacks (/work/.library/device/KINDS.md's package list), plus transformers and peft, which the image has at
# other versions than the tested ones. Versions are tools/requirements.txt's pins (espnet: tools/Makefile's
# ESPNET_SPEC); wheels only, for CPython DEVICE_PYTHON on manylinux x86-64, no dependencies.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-${repo}/bench/wheelhouse}
device_python=${DEVICE_PYTHON:-3.12}
packages=(espnet kaldiio typeguard humanfriendly torch-complex espnet-g2p-en jamo jaconv espnet_tts_frontend inflect
          Unidecode pydantic pydantic_core annotated-types typing-inspection defusedxml nltk librosa soxr soundfile cffi
          transformers peft)

normalize() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
pin() {  # NAME -> NAME==VERSION from the tested environment
    local want line
    want=$(normalize "$1")
    if [ "${want}" = espnet ]; then
        sed -n 's/^ESPNET_SPEC ?= *//p' "${repo}/tools/Makefile"
        return
    fi
    while IFS= read -r line; do
        case ${line} in \#*|'') continue ;; esac
        if [ "$(normalize "${line%%==*}")" = "${want}" ]; then echo "${line}"; return; fi
    done < "${repo}/tools/requirements.txt"
    echo "make_wheelhouse.sh: $1 has no pin in tools/requirements.txt" >&2
    return 1
}

specs=()
for package in "${packages[@]}"; do specs+=("$(pin "${package}")"); done
if [ -x "${repo}/tools/venv/bin/pip" ]; then pip=("${repo}/tools/venv/bin/pip"); else pip=(python3 -m pip); fi
mkdir -p "${dest}"
rm -f "${dest}"/*.whl
abi=cp${device_python/./}
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "${dest}" \
    --python-version "${device_python}" --implementation cp --abi "${abi}" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "${specs[@]}"
ls -1 "${dest}"
echo "$(find "${dest}" -name '*.whl' | wc -l) wheels, $(du -sh "${dest}" | cut -f1) in ${dest}"
