#!/usr/bin/env bash
# Shared settings of the launch scripts (override with environment variables) and the gcloud
# wrapper: with --dry-run as the first argument (or DRY_RUN=1) every gcloud command is printed,
# one per line prefixed with "+ gcloud", instead of run.
set -euo pipefail
: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:=us-central2-b}"
: "${TPU_NAME:=gr-jax}"
: "${ACCELERATOR:=v4-8}"           # e.g. v4-32, v5litepod-16, v5p-128, v6e-256
: "${RUNTIME:=tpu-ubuntu2204-base}"
: "${SPOT:=0}"                     # 1: spot (preemptible) capacity; gr_jax checkpoints on SIGTERM and resumes
: "${QUEUED:=0}"                   # 1: request through queued resources (waits for capacity)
: "${WORKERS:=}"                   # hosts of the slice (default: asked from gcloud; needed for --dry-run)
: "${BUCKET:=}"                    # gs://bucket to mount with gcsfuse at $MOUNT on every worker (shared workdir)
: "${MOUNT:=/mnt/gcs}"
: "${DRY_RUN:=0}"
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
ARGS=("$@")

gc() {
  if [ "$DRY_RUN" = 1 ]; then printf '+ gcloud'; printf ' %q' "$@"; printf '\n'; else gcloud "$@"; fi
}
tpu() { gc compute tpus tpu-vm "$1" "$TPU_NAME" "${@:2}" --project="$PROJECT" --zone="$ZONE"; }
on_workers() { tpu ssh --worker=all --command="$1"; }  # one shell command on every worker
tpu_scp() { gc compute tpus tpu-vm scp "$@" --project="$PROJECT" --zone="$ZONE"; }  # SRC DEST --worker=...
spot_flag() { if [ "$SPOT" = 1 ]; then echo "--spot"; fi; }

num_workers() {
  if [ -n "$WORKERS" ]; then echo "$WORKERS"; return; fi
  if [ "$DRY_RUN" = 1 ]; then echo 1; return; fi
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --format="value(networkEndpoints.len())"
}
