# ====== About run.pl-style job dispatch (Kaldi/ESPnet) ======
# Recipes source this file and run every heavy step through one of the commands below:
#
#   ${cmd} [--gpu N] [--mem 16G] [--num_threads N] [--time 4:00:00] [--max_jobs_run N] \
#       JOB=1:N exp/log/x.JOB.log command args JOB
#
# which runs N jobs with JOB replaced by 1..N in the log path and the command, writes each
# job's output (with a `# command` header and a `# Ended (code N)` footer) to its log, and
# exits non-zero naming every failing log.  `${cmd} exp/log/x.log command args` runs one job.
# Several command words reach the job unchanged (each is quoted, so paths may hold spaces, `(`,
# `;` or `$`), except shell operators standing alone as words: `prog a \| sort \> out` pipes.
# A single command argument is a shell command line, so "a | b > c" works.
# JOB is replaced wherever its text occurs, as in Kaldi: for paths that may themselves hold the
# text JOB, name the variable otherwise (SPLIT=1:N ... SPLIT).
#
# cmd_backend: where jobs run.  Set it in the environment to override, e.g.
#       cmd_backend=slurm ./run.sh
#   local: this machine (utils/run_local.py); at most --max_jobs_run jobs at a time
#          (default: the number of CPUs).  --gpu k gives each job k GPUs of its own through
#          CUDA_VISIBLE_DEVICES, from those the machine offers (CUDA_VISIBLE_DEVICES if set,
#          else `nvidia-smi -L`); jobs wait while all are taken; more than it has is an error.
#          --gpu 0 jobs run with CUDA_VISIBLE_DEVICES="".  --mem/--time are ignored.
#   slurm: one sbatch job array per command (utils/run_slurm.py); options become sbatch
#          flags through ${slurm_conf} (--gpu k: --gres=gpu:k); the batch script is
#          written to LOGDIR/q/NAME.sh.
cmd_backend=${cmd_backend:-local}

# The repository root: the real directory of this file, so recipes may symlink it.
_cmd_sh_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)

# slurm_conf: option -> sbatch flag mapping for the slurm backend (see conf/slurm.conf).
slurm_conf=${slurm_conf:-${_cmd_sh_root}/conf/slurm.conf}

case "${cmd_backend}" in
    local) _cmd_sh_dispatch="${_cmd_sh_root}/utils/run_local.py" ;;
    slurm) _cmd_sh_dispatch="${_cmd_sh_root}/utils/run_slurm.py --config ${slurm_conf}" ;;
    *)
        echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (choose local or slurm)" >&2
        return 1
        ;;
esac

# train_cmd: data preparation, feature dumps, scoring and CPU training.
export train_cmd=${_cmd_sh_dispatch}
# cuda_cmd: GPU training and GPU encoder dumps; the recipe appends --gpu N itself.
export cuda_cmd=${_cmd_sh_dispatch}
# decode_cmd: decoding jobs (CPU, or GPU with --gpu 1 added by the recipe).
export decode_cmd=${_cmd_sh_dispatch}

unset _cmd_sh_root _cmd_sh_dispatch
