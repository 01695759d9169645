#!/usr/bin/env bash
# Train maeclip_jax on a Cloud TPU VM slice: create the slice, install the package on every
# worker, run the trainer on all workers at once (one process per host, jax.distributed
# finds its peers by itself on TPU VMs), stream every worker's log, tear the slice down.
#
#   launch/tpu_vm.sh --tpu=v4 --chips=32 --zone=us-central2-b --name=maeclip \
#       --config=configs/maeclip_laion.py --workdir=gs://BUCKET/run1 \
#       -- --config.input.data='gs://BUCKET/laion/{00000..41407}.tar'
#   launch/tpu_vm.sh --dry-run ...   # print the commands, run nothing
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh [options] [-- extra trainer flags]

Creates a Cloud TPU VM slice, installs this checkout on all workers, runs
`python -m maeclip_jax.main --distributed` on all workers, streams the logs and
deletes the slice when the run ends (unless --keep).

Options:
  --tpu=v4|v5e|v5p     TPU generation (default v4)
  --chips=N            chips in the slice (default 8; see "Accelerator types" below)
  --accelerator-type=T exact accelerator type instead (e.g. v4-64, v5litepod-16, v5p-32)
  --name=NAME          TPU name (default maeclip)
  --zone=ZONE          zone (default us-central2-b)
  --project=PROJECT    GCP project (default: gcloud's configured one)
  --version=RUNTIME    TPU software version (default by generation)
  --spot               create a Spot slice
  --config=FILE        trainer config (default configs/maeclip_laion.py)
  --workdir=DIR        trainer workdir, a gs:// path for multi-host runs (required)
  --keep               do not delete the slice at the end
  --dry-run            print every command instead of running it
  -h, --help           this help

Accelerator types: v4 and v5p name TensorCores (2 per chip): --chips=16 -> v4-32;
v5e names chips: --chips=16 -> v5litepod-16.
USAGE
}

TPU=v4 CHIPS=8 ACCEL="" NAME=maeclip ZONE=us-central2-b PROJECT="" VERSION="" SPOT=0
CONFIG=configs/maeclip_laion.py WORKDIR="" KEEP=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --chips=*) CHIPS="${1#*=}" ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "$WORKDIR" ]]; then
  echo "tpu_vm.sh: --workdir is required (a gs:// path every worker can write)" >&2; exit 2
fi
if ! [[ "$CHIPS" =~ ^[0-9]+$ ]] || [[ "$CHIPS" -lt 1 ]]; then
  echo "tpu_vm.sh: --chips must be a positive integer, got '$CHIPS'" >&2; exit 2
fi
case "$TPU" in
  v4) DEFAULT_ACCEL="v4-$((CHIPS * 2))"; DEFAULT_VERSION=tpu-ubuntu2204-base ;;
  v5e) DEFAULT_ACCEL="v5litepod-$CHIPS"; DEFAULT_VERSION=v2-alpha-tpuv5-lite ;;
  v5p) DEFAULT_ACCEL="v5p-$((CHIPS * 2))"; DEFAULT_VERSION=v2-alpha-tpuv5 ;;
  *) echo "tpu_vm.sh: --tpu must be v4, v5e or v5p, got '$TPU'" >&2; exit 2 ;;
esac
ACCEL="${ACCEL:-$DEFAULT_ACCEL}"
VERSION="${VERSION:-$DEFAULT_VERSION}"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then WHERE+=("--project=$PROJECT"); fi

# Prints the command (shell-quoted) in a dry run, runs it otherwise.
run() {
  if [[ "$DRY_RUN" -eq 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="/tmp/maeclip_jax_src.tar.gz"

CREATE=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION")
if [[ "$SPOT" -eq 1 ]]; then CREATE+=(--spot); fi
run "${CREATE[@]}"

teardown() {
  if [[ "$KEEP" -eq 0 ]]; then
    run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}
trap teardown EXIT

# Install: the committed tree of this checkout, on every worker.
run git -C "$REPO_DIR" archive --format=tar.gz -o "$TARBALL" HEAD
run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:~/maeclip_jax_src.tar.gz" "${WHERE[@]}" --worker=all
INSTALL='mkdir -p ~/maeclip_jax && tar xzf ~/maeclip_jax_src.tar.gz -C ~/maeclip_jax && pip install -q "jax[tpu]==0.10.2" ~/maeclip_jax'
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"

# Train: the same command on all workers; their output streams back here, prefixed by worker.
TRAIN="cd ~/maeclip_jax && python3 -m maeclip_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR"
for flag in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(printf '%q' "$flag")"; done
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$TRAIN 2>&1 | tee -a ~/train.log"
