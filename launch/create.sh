#!/usr/bin/env bash
# Creates a TPU VM (single host or pod slice).
source "$(dirname "$0")/common.sh"
"${TPU[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
