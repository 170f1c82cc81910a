#!/bin/bash
# Runs many pipeline variants in parallel on one machine (the PRISM/TIGER tables in BENCHMARKS.md).
#
#   FEATURES=runs/sci-features/features OUT=runs/sweep T=600 \
#   TOKS="full|configs/prism.py:scientific|" \
#   RUNS="prism|configs/prism.py:scientific|full|;prism_no_dsi|configs/prism.py:scientific|full|--config.model.dsi=False" \
#   [P=2] bash bench/sweep.sh [--config.extra=overrides for every run]
#
# FEATURES: a features stage's output (text_embeddings.npy, cf_embeddings.npy), e.g. from
#   python -m gr_jax.main --config=configs/prism.py:scientific --config.stages=data,features --workdir=runs/sci-features
# Phase 1 fits each tokenizer once (TOKS="tok|config|overrides;..."); phase 2 trains and evaluates
# every run on a copy of its tokenizer's SID table (RUNS="name|config|tok|overrides;..."), all in
# parallel (at most P at a time when P > 0: several XLA processes on few cores slow each other more
# than they gain). Results: OUT/<name>/{eval/metrics.json,train/summary.json,...}, logs OUT/<name>.log.
set -o pipefail
: "${FEATURES:?set FEATURES to a features stage output dir}" "${TOKS:?}" "${RUNS:?}"
OUT=${OUT:-runs/sweep}; T=${T:-3600}; P=${P:-0}; EXTRA="$*"
mkdir -p "$OUT"
launch() {  # name config stages overrides...
  local name=$1 cfg=$2 stages=$3; shift 3
  while [ "$P" -gt 0 ] && [ "$(jobs -rp | wc -l)" -ge "$P" ]; do sleep 5; done
  ( t=$SECONDS; timeout "$T" python3 -m gr_jax.main --config="$cfg" $EXTRA --config.stages="$stages" "$@" \
      --workdir="$OUT/$name" > "$OUT/$name.log" 2>&1; echo "== $name rc=$? wall=$((SECONDS - t))s" ) &
  PIDS="$PIDS $!"
}
run_phase() {  # phase-name spec-list kind
  local specs; PIDS=""
  IFS=';' read -ra specs <<< "$2"
  for spec in "${specs[@]}"; do
    if [ "$3" = tok ]; then
      IFS='|' read -r tok cfg over <<< "$spec"
      mkdir -p "$OUT/tok_$tok" && ln -sfn "$(realpath "$FEATURES")" "$OUT/tok_$tok/features"  # read only
      launch "tok_$tok" "$cfg" data,tokenize $over
    else
      IFS='|' read -r name cfg tok over <<< "$spec"
      mkdir -p "$OUT/$name" && ln -sfn "$(realpath "$OUT/tok_$tok/features")" "$OUT/$name/features" \
        && ln -sfn "$(realpath "$OUT/tok_$tok/tokenize")" "$OUT/$name/tokenize"
      launch "$name" "$cfg" data,train,eval $over
    fi
  done
  wait $PIDS
  echo "== $1 done at ${SECONDS}s"
}
run_phase tokenizers "$TOKS" tok
run_phase runs "$RUNS" run
python3 - "$OUT" <<'PY'
import json, os, sys
root = sys.argv[1]
cols = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "eval", "metrics.json")
    if os.path.exists(path):
        m = json.load(open(path))
        row = lambda split: " ".join(f"{m[split][c]:.4f}" for c in cols)
        print(f"{name:16s} valid {row('valid')} | test {row('test')} | test tail R@10 {m['test/tail']['recall@10']:.4f}")
PY
