#!/usr/bin/env bash
# Runs python3 -m gr_jax.main --multihost ARGS on every worker (JAX discovers the slice), keeping
# each worker's output in ~/gr_jax_run.log there, then copies the logs to logs/$TPU_NAME/worker-N.log.
# Usage: launch/run.sh [--dry-run] --config=configs/prism.py:scientific_full --workdir=$MOUNT/runs/x ...
source "$(dirname "$0")/common.sh"
[ ${#ARGS[@]} -gt 0 ] || { echo "usage: launch/run.sh [--dry-run] --config=... --workdir=... [--config.x=y]" >&2; exit 2; }
command="set -o pipefail; cd ~/gr_jax && python3 -m gr_jax.main --multihost$(printf ' %q' "${ARGS[@]}") 2>&1 | tee ~/gr_jax_run.log"
status=0
on_workers "$command" || status=$?
[ "$DRY_RUN" = 1 ] || mkdir -p "logs/$TPU_NAME"
for ((i = 0; i < $(num_workers); i++)); do
  tpu_scp "$TPU_NAME":~/gr_jax_run.log "logs/$TPU_NAME/worker-$i.log" --worker="$i" || true
done
exit "$status"
