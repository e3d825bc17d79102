# Sourced by run.sh and local/compare_input_paths.sh: the llm.sh options every mini system shares
# (corpus, checkpoints, CPU settings, directories), from the caller's ${corpus}, ${expdir}, ${nj},
# ${encoder_dtype} and ${frozen_dtype}.
# Whisper runs on unpadded input here (--pad_to_30s false): on 2 CPU cores a 30-s window costs 2.1 s per
# utterance against 0.13 s for a 3-s utterance.
# encoder_dtype: what stage 3 runs Whisper-base in; frozen_dtype: the speech-LLM phases' autocast (weights and
# AdamW states stay float32; the Conformer trains in float32). Each auto, bfloat16 or float32 (local/cpu_dtype.sh).
# Decoding batch 64 gives the same hypotheses as 16, ~25% faster on 2 cores.
. local/cpu_dtype.sh
encoder_dtype=$(cpu_dtype "${encoder_dtype}")
frozen_dtype=$(cpu_dtype "${frozen_dtype}")
# shellcheck disable=SC2034
mini_llm_opts=(--local_data_opts "--aishell_dir ${corpus@Q}/data_aishell --ner_dir ${corpus@Q}/aishell_ner"
    --whisper "${MAIN_ROOT}/tools/models/whisper-base" --llm "${expdir}/stand_ins/chatglm3" --encoder_dtype "${encoder_dtype}"
    --ngpu 0 --train_num_threads 1 --nj "${nj}" --inference_nj 1 --inference_batch_size 64 --expdir "${expdir}"
    --pad_to_30s false --dumpdir "${expdir}/dump" --datadir "${expdir}/data" --results "${expdir}/RESULTS.md")
mini_llm_train_args="--frozen_dtype ${frozen_dtype}"
