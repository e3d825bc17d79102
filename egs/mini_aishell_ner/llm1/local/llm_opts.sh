# Sourced by run.sh and local/compare_input_paths.sh: the llm.sh options every mini system shares
# (corpus, checkpoints, CPU settings, directories), from the caller's ${corpus}, ${expdir}, ${nj} and ${dtype}.
# Whisper runs on unpadded input here (--pad_to_30s false): on 2 CPU cores a 30-s window costs 2.1 s per
# utterance against 0.13 s for a 3-s utterance.
# dtype: float32, bfloat16 (where the CPU computes it natively, AVX512-BF16 or AMX: Whisper dumps 2.3x faster,
# training steps ~20% faster under autocast, weights and AdamW states in fp32), or auto (bfloat16 where native).
# shellcheck disable=SC2034
if [ "${dtype}" = auto ]; then
    dtype=float32; grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && dtype=bfloat16
fi
mini_llm_opts=(--local_data_opts "--aishell_dir ${corpus@Q}/data_aishell --ner_dir ${corpus@Q}/aishell_ner"
    --whisper "${MAIN_ROOT}/tools/models/whisper-base" --llm "${expdir}/stand_ins/chatglm3" --encoder_dtype "${dtype}"
    --ngpu 0 --train_num_threads 1 --nj "${nj}" --inference_nj 1 --expdir "${expdir}" --pad_to_30s false
    --dumpdir "${expdir}/dump" --datadir "${expdir}/data" --results "${expdir}/RESULTS.md")
mini_llm_train_args="--frozen_dtype ${dtype}"  # the speech-LLM phases' autocast (the Conformer trains in float32)
