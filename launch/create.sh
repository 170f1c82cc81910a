#!/usr/bin/env bash
# Creates the TPU VM (one host or every host of a pod slice): directly, or through queued
# resources when QUEUED=1 (waits until the slice is ACTIVE); SPOT=1 asks for spot capacity.
# Usage: launch/create.sh [--dry-run]
source "$(dirname "$0")/common.sh"
if [ "$QUEUED" = 1 ]; then
  gc compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" $(spot_flag)
  until [ "$DRY_RUN" = 1 ] || [ "$(gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --format='value(state.state)')" = ACTIVE ]; do
    echo "waiting for queued resource $TPU_NAME ..."; sleep 30
  done
else
  tpu create --accelerator-type="$ACCELERATOR" --version="$RUNTIME" $(spot_flag)
fi
