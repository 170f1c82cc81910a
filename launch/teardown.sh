#!/usr/bin/env bash
# Deletes the TPU VM.
source "$(dirname "$0")/common.sh"
"${TPU[@]}" delete "$TPU_NAME" --quiet
