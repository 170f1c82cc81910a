#!/usr/bin/env bash
# Runs the given command in ~/gr_jax on every worker of the TPU VM.
source "$(dirname "$0")/common.sh"
[ $# -gt 0 ] || { echo "usage: launch/run.sh COMMAND..." >&2; exit 2; }
"${TPU[@]}" ssh "$TPU_NAME" --worker=all --command "cd ~/gr_jax && $(printf '%q ' "$@")"
