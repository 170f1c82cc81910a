#!/usr/bin/env bash
# Shared settings for the launch scripts; override with environment variables.
set -euo pipefail
: "${PROJECT:?set PROJECT to your GCP project}"
: "${ZONE:=us-central2-b}"
: "${TPU_NAME:=gr-jax}"
: "${ACCELERATOR:=v4-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}"
TPU=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")
