#!/usr/bin/env bash
# AISHELL-1 + AISHELL-NER with Whisper-large-v2 + ChatGLM3-6B (the paper's full-size setup).
# Set the four paths below (or pass them as options), then e.g.:
#   ./run.sh --arch decoder_only                       # everything, stages 1-10
#   ./run.sh --arch encoder_decoder --stage 5          # the other architecture, reusing data and dumps
#   ./run.sh --system conformer --stage 4              # the ESPnet Conformer baseline
#   ./run.sh --stage 3 --stop_stage 7                  # dumps through phase 3
# Every other option of llm.sh (./llm.sh --help) is passed through.
set -euo pipefail

aishell_dir=/path/to/aishell/data_aishell      # holds wav/{train,dev,test} and transcript/
ner_dir=/path/to/aishell_ner                   # aishell_ner_transcript.{train,dev,test}.txt
whisper=/path/to/whisper-large-v2              # Hugging Face directory or OpenAI large-v2.pt
llm=/path/to/chatglm3-6b                       # ChatGLM3-6B directory (upstream or converted) with tokenizer.model
arch=decoder_only

# Let command-line options override the variables above, and pass everything to llm.sh.
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --aishell_dir) aishell_dir=$2; shift 2;; --ner_dir) ner_dir=$2; shift 2;;
        --whisper) whisper=$2; shift 2;; --llm) llm=$2; shift 2;; --arch) arch=$2; shift 2;;
        *) shift;;
    esac
done

./llm.sh \
    --aishell_dir "${aishell_dir}" --ner_dir "${ner_dir}" --whisper "${whisper}" --llm "${llm}" --arch "${arch}" \
    --phase1_config "conf/train_${arch}_phase1.yaml" \
    --phase2_config "conf/train_${arch}_phase2.yaml" \
    --phase3_config "conf/train_${arch}_phase3.yaml" \
    --asr_config conf/train_conformer.yaml --asr_inference_config conf/decode_conformer.yaml \
    --ngpu 1 --nj 32 --inference_nj 8 --gpu_inference true \
    "${args[@]}"
