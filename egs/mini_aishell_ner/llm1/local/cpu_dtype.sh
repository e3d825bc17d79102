# Sourced by local/llm_opts.sh and local/compare_dump_dtype.sh.
# cpu_dtype VALUE: prints float32 or bfloat16 as given, and for auto bfloat16 where the CPU computes it natively
# (AVX512-BF16 or AMX: Whisper-base dumps ~2.3x faster) and float32 elsewhere (emulated bfloat16 is slower than
# float32); anything else is an error.
cpu_dtype() {
    case "$1" in
        float32|bfloat16) echo "$1" ;;
        auto) if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then echo bfloat16; else echo float32; fi ;;
        *) echo "$0: a dtype is auto, bfloat16 or float32, got '$1'" >&2; return 1 ;;
    esac
}
