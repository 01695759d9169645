#!/usr/bin/env bash
# Train maeclip_jax on a SLURM GPU cluster: one process per host (it drives all the host's
# GPUs), process 0's host is the jax.distributed coordinator.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh --config=configs/maeclip_laion.py \
#       --workdir=/shared/runs/maeclip -- --config.input.data='/shared/laion/{00000..41407}.tar'
#   launch/slurm.sh --dry-run --nodelist=gpu[01-04] ...   # print the commands, run nothing
#SBATCH --job-name=maeclip
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: sbatch [sbatch options] launch/slurm.sh [options] [-- extra trainer flags]

Runs `python -m maeclip_jax.main` once per allocated node with srun; the first node
of the allocation is the coordinator.

Options:
  --config=FILE      trainer config (default configs/maeclip_laion.py)
  --workdir=DIR      trainer workdir on a filesystem all nodes share (required)
  --port=PORT        coordinator port (default 12355)
  --python=PYTHON    interpreter on the nodes (default python3)
  --nodelist=LIST    node list instead of $SLURM_JOB_NODELIST (e.g. for --dry-run)
  --dry-run          print the commands instead of running them
  -h, --help         this help
USAGE
}

CONFIG=configs/maeclip_laion.py WORKDIR="" PORT=12355 PYTHON=python3 DRY_RUN=0
NODELIST="${SLURM_JOB_NODELIST:-}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --nodelist=*) NODELIST="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "slurm.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "$WORKDIR" ]]; then
  echo "slurm.sh: --workdir is required (a directory every node can write)" >&2; exit 2
fi
if [[ -z "$NODELIST" ]]; then
  echo "slurm.sh: no nodes: run it with sbatch, or give --nodelist" >&2; exit 2
fi

# Expands SLURM's compressed node list (gpu[01-04]) with scontrol when available; a plain
# comma-separated list otherwise.
expand_nodes() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1"
  else
    tr ',' '\n' <<<"$1"
  fi
}
mapfile -t NODES < <(expand_nodes "$NODELIST")
NUM_PROCESSES="${#NODES[@]}"
COORDINATOR="${NODES[0]}:$PORT"

TRAIN=("$PYTHON" -m maeclip_jax.main "--config=$CONFIG" "--workdir=$WORKDIR"
       "--coordinator_address=$COORDINATOR" "--num_processes=$NUM_PROCESSES")
TRAIN+=("${EXTRA[@]+"${EXTRA[@]}"}")
# SLURM_PROCID is only known inside each task: srun exports it, the task passes it on.
TASK="exec $(printf '%q ' "${TRAIN[@]}")--process_id=\$SLURM_PROCID"
CMD=(srun "--nodes=$NUM_PROCESSES" --ntasks-per-node=1 "--nodelist=$NODELIST" --kill-on-bad-exit=1
     bash -c "$TASK")

echo "slurm.sh: $NUM_PROCESSES processes, coordinator $COORDINATOR" >&2
if [[ "$DRY_RUN" -eq 1 ]]; then
  printf '%q ' "${CMD[@]}"; printf '\n'
else
  "${CMD[@]}"
fi
