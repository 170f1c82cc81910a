#!/usr/bin/env bash
# Deletes the TPU VM (and its queued resource when QUEUED=1).
# Usage: launch/teardown.sh [--dry-run]
source "$(dirname "$0")/common.sh"
if [ "$QUEUED" = 1 ]; then
  gc compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --force --quiet
else
  tpu delete --quiet
fi
