#!/usr/bin/env bash
# Copies a dataset folder from Cloud Storage to the same local path on every worker (the raw files
# the data stage reads; with a gcsfuse mount, --config.data.dir=$MOUNT/... works without copying).
# Usage: launch/stage_data.sh [--dry-run] gs://bucket/path/scientific ~/data/scientific
source "$(dirname "$0")/common.sh"
[ ${#ARGS[@]} -eq 2 ] || { echo "usage: launch/stage_data.sh [--dry-run] gs://SRC LOCAL_DIR" >&2; exit 2; }
on_workers "mkdir -p ${ARGS[1]} && gcloud storage cp -r '${ARGS[0]}/*' ${ARGS[1]}/"
