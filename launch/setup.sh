#!/usr/bin/env bash
# Copies this checkout to every worker and installs JAX for TPU plus gr_jax.
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/gr_jax.tgz -C "$repo" .
"${TPU[@]}" scp /tmp/gr_jax.tgz "$TPU_NAME":~/gr_jax.tgz --worker=all
"${TPU[@]}" ssh "$TPU_NAME" --worker=all --command \
  'mkdir -p ~/gr_jax && tar -xzf ~/gr_jax.tgz -C ~/gr_jax && cd ~/gr_jax && pip install -U "jax[tpu]" && pip install -e .'
