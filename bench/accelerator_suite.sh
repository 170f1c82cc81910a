#!/bin/bash
# The accelerator rows of BENCHMARKS.md in one command on one GPU (or TPU) host:
#   1. every family's train/decode throughput, float32 and bfloat16 (bench/accelerator.py);
#   2. the PyTorch peer at the same shapes, both dtypes (bench/peer_t5.py; skipped without torch);
#   3. input pipeline examples/s (in-process and with worker processes) against the step rate;
#   4. TIGER :scientific quality, float32 vs bfloat16, over SEEDS, runs in parallel (what time is left).
#
#   DATA=dir/with/Scientific.inter.json INDEX=Scientific.index.json OUT=runs/accel bash bench/accelerator_suite.sh
#
# Results: OUT/results.jsonl (every JSON line), OUT/errors.log (stderr, the quality runs' log tails);
# the quality runs' workdirs go to WORK (default /tmp/accel-quality).
#
# DATA: the LC-Rec Scientific files; INDEX: a tokenize stage's index.json (every quality run trains
# on the same SIDs, so the rows differ only by dtype and seed). BUDGET: seconds for the whole suite;
# QUALITY_EXTRA: overrides for the quality runs.
# WHEELS: a folder of wheels to install to /tmp/site first (a host without network).
set -o pipefail
OUT=${OUT:-runs/accel}; BUDGET=${BUDGET:-540}; SEEDS=${SEEDS:-"0 1"}
MODELS=${MODELS:-tiger_item,tiger,prism,pctx,semconv,gat,two_tower,crbr,latent,sasrec}
DATA=${DATA:-../shared/data/scientific}; INDEX=${INDEX:-}; WORK=${WORK:-/tmp/accel-quality}
mkdir -p "$OUT" "$WORK"
RESULTS="$OUT/results.jsonl"; ERRORS="$OUT/errors.log"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
 python3 -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())") \
  | tee -a "$ERRORS"

echo "== 1. throughput table ($(left)s left)"
timeout $(( $(left) * 55 / 100 )) python3 bench/accelerator.py --models "$MODELS" 2>> "$ERRORS" | tee -a "$RESULTS"

echo "== 2. peer ($(left)s left)"
if [ "${PEER:-1}" = 1 ] && python3 -c "import torch, transformers" 2> /dev/null; then
  for dtype in float32 bfloat16; do
    timeout 75 python3 bench/peer_t5.py --dtype $dtype 2>> "$ERRORS" | tee -a "$RESULTS"
  done
else
  echo "peer skipped (PEER=0, or torch/transformers not installed)"
fi

echo "== 3. input pipeline ($(left)s left)"
timeout 90 python3 bench/input_pipeline.py --config=sasrec:scientific --data_dir="$DATA" --workers 0,4,8 \
  2>> "$ERRORS" | tee -a "$RESULTS"

echo "== 4. quality, float32 vs bfloat16 ($(left)s left)"
if [ -n "$INDEX" ] && [ "$(left)" -gt 60 ]; then
  for dtype in float32 bfloat16; do
    for seed in $SEEDS; do
      XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 timeout $(( $(left) - 15 )) python3 -m gr_jax.main \
        --config=configs/tiger.py:scientific --config.data.dir="$DATA" --config.features.text.enabled=False \
        --config.tokenizer.name=index_json --config.tokenizer.index_json="$INDEX" --config.eval.batch_size=1024 \
        --config.model.dtype=$dtype --config.seed=$seed --workdir="$WORK/${dtype}_$seed" ${QUALITY_EXTRA:-} \
        > "$WORK/${dtype}_$seed.log" 2>&1 &
    done
  done
  wait
  for log in "$WORK"/*.log; do echo "--- $log"; grep -v "step [0-9]*/" "$log" | tail -15; done >> "$ERRORS"
  python3 - "$WORK" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "eval", "metrics.json"))):
    m = json.load(open(path))
    summary = json.load(open(os.path.join(os.path.dirname(os.path.dirname(path)), "train", "summary.json")))
    print(json.dumps({"name": "quality", "run": path.split(os.sep)[-3], "train_seconds": round(summary["train_seconds"]),
                      "best_step": summary["best_step"]} |
                     {f"{s}_{k}": round(m[s][k], 4) for s in ("valid", "test") for k in ("recall@10", "ndcg@10")}))
PY
fi | tee -a "$RESULTS"
echo "== done in $((SECONDS - start))s"
