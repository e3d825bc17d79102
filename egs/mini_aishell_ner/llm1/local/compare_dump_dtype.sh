#!/usr/bin/env bash
# Does storing the frozen encoder's outputs as float16 (stage 3's default) move the scores? Dumps the test
# set's encoder outputs again, stored as float32 and computed as that run's were (--encoder_dtype, as given to ./run.sh),
# and decodes it with the run's trained models beside the float16 decodings stage 8 made; prints both and writes
# EXPDIR/dump_dtype_check/summary.tsv.
#   local/compare_dump_dtype.sh [--expdir exp] [--systems "decoder_only encoder_decoder"] [--encoder_dtype float32]
set -euo pipefail

expdir=exp
systems="decoder_only encoder_decoder"
decode_specs="phase1:asr:0 phase3:ner:0 phase3:ner:1 phase3:ner:2"
test_set=test
encoder_dtype=float32
help_message="Usage: $0 [--expdir exp] [--systems \"${systems}\"] [--decode_specs \"${decode_specs}\"] [--test_set test] [--encoder_dtype float32|bfloat16|auto]"
. ./path.sh
. utils/parse_options.sh
. local/cpu_dtype.sh
encoder_dtype=$(cpu_dtype "${encoder_dtype}")

data=${expdir}/data/${test_set}
out=${expdir}/dump_dtype_check
fp32=${out}/dump/enc/${test_set}
[ -f "${expdir}/dump/enc/${test_set}/feats.scp" ] || { echo "$0: run ./run.sh first (no ${expdir}/dump/enc/${test_set})" >&2; exit 1; }
if [ ! -f "${fp32}/feats.scp" ]; then
    python -m espnet2_ext.bin.dump_feats --wav_scp "${data}/wav.scp" --out_dir "${fp32}" --name feats \
        --whisper "${MAIN_ROOT}/tools/models/whisper-base" --encoder_out --pad_to_30s false --dump_dtype float32 --dtype "${encoder_dtype}"
fi
printf 'system\tphase\ttask\thistory\tcer_fp16\tcer_fp32\tf1_fp16\tf1_fp32\tsame_hyps\n' > "${out}/summary.tsv"
for sys in ${systems}; do
    for spec in ${decode_specs}; do
        IFS=: read -r phase task his <<< "${spec}"
        ref_dir=${expdir}/${sys}/decode_${phase}_${task}_his${his}/${test_set}
        dir=${out}/${sys}/decode_${phase}_${task}_his${his}
        if [ ! -f "${dir}/score/result.json" ]; then
            mkdir -p "${out}/${sys}"
            python -m espnet2_ext.bin.speechllm_inference --model_dir "${expdir}/${sys}/${phase}" \
                --llm_conf "path=${expdir}/stand_ins/chatglm3" \
                --data_path_and_name_and_type "${fp32}/feats.scp,speech,kaldi_ark" --history_file "${data}/history" \
                --task "${task}" --history "${his}" --batch_size 16 --output_dir "${dir}" > "${dir}.log" 2>&1 \
                || { tail -n 5 "${dir}.log"; exit 1; }
            python -m espnet2_ext.bin.score_ner --ref "${data}/text" --hyp "${dir}/text" --out "${dir}/score" --name fp32 > /dev/null
        fi
        python - "${ref_dir}" "${dir}" "${sys}" "${spec}" >> "${out}/summary.tsv" <<'PY'
import json, sys
from pathlib import Path
fp16, fp32, system, spec = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
a, b = (json.loads((d / "score/result.json").read_text()) for d in (fp16, fp32))
hyps = [dict(line.split(" ", 1) for line in (d / "text").read_text(encoding="utf-8").splitlines()) for d in (fp16, fp32)]
same, total = sum(hyps[0][u] == hyps[1].get(u) for u in hyps[0]), len(hyps[0])
task = spec.split(":")[1]
f1 = lambda r: f"{r['f1']['ALL']:.3f}" if task == "ner" else "-"
print("\t".join([system, *spec.split(":"), f"{a['cer']:.2f}", f"{b['cer']:.2f}", f1(a), f1(b), f"{same}/{total}"]))
PY
    done
done
column -t -s $'\t' "${out}/summary.tsv"
