#!/usr/bin/env bash
# The faults of BENCHMARKS.md "Reliability", reproduced on :tiny configs (about 6 minutes on 2 cores).
# Usage: bash bench/fault_repros.sh [WORKDIR_ROOT]   (default: a fresh temporary directory)
# Each case prints the exit status and the last lines the run wrote to stderr.
set -u
root=${1:-$(mktemp -d)}
mkdir -p "$root"
gr() { python -m gr_jax.main "$@"; }  # in the background, use python itself: $! must be its pid
show() { echo "  rc=$1"; grep -v '^\s*$' "$2" | grep -E 'error:|^W|stopped by|Resum|Removed|restore' | tail -n "${3:-4}" | cut -c1-240 | sed 's/^/  | /'; }

echo "1. corrupted newest checkpoint"
sasrec=(--config=configs/sasrec.py:tiny --config.train.num_steps=1500 --config.train.checkpoint_every_steps=20
        --config.train.early_stop_patience=0 --config.stages=data,train)
gr "${sasrec[@]}" --workdir="$root/f3" > /dev/null 2>&1
for f in $(find "$root/f3/train/checkpoints/latest/1500/state" -type f); do
  truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
done
gr "${sasrec[@]}" --workdir="$root/f3" > /dev/null 2> "$root/f3.err"; show $? "$root/f3.err" 3

echo "2. two runs on one workdir, 1 s apart"
python -m gr_jax.main "${sasrec[@]}" --workdir="$root/f2" > /dev/null 2>&1 & first=$!
sleep 1
gr "${sasrec[@]}" --workdir="$root/f2" > /dev/null 2> "$root/f2.err"; show $? "$root/f2.err" 1
wait $first; echo "  first run rc=$?"

echo "3. SIGTERM mid-training, then the same command again"
python -m gr_jax.main "${sasrec[@]}" --workdir="$root/f1" > /dev/null 2> "$root/f1.err" & run=$!
for _ in $(seq 120); do grep -q "step *[1-9][0-9]*/" "$root/f1.err" 2>/dev/null && break; sleep 1; done
kill -TERM $run; wait $run; show $? "$root/f1.err" 2
ls "$root/f1/train/checkpoints/latest" | sed 's/^/  checkpoints: /' | tr '\n' ' '; echo
gr "${sasrec[@]}" --workdir="$root/f1" > /dev/null 2> "$root/f1b.err"; rc=$?
echo "  rerun rc=$rc; $(grep -o 'Resum[^.]*' "$root/f1b.err" | head -1)"

echo "4. a failed command on a finished run"
before=$(md5sum "$root/f1/runs.jsonl" "$root/f1/train/config.json")
gr "${sasrec[@]}" --config.stages=data,trian --workdir="$root/f1" > /dev/null 2> "$root/f4.err"; show $? "$root/f4.err" 1
[ "$before" = "$(md5sum "$root/f1/runs.jsonl" "$root/f1/train/config.json")" ] && echo "  run record unchanged" \
  || echo "  RUN RECORD CHANGED"

echo "5. out-of-range values"
gr --config=configs/rqkmeans.py:tiny --config.stages=data,features,tokenize --workdir="$root/f5" > /dev/null 2>&1
python - "$root" <<'EOF'
import json, sys
codes = json.load(open(f"{sys.argv[1]}/f5/tokenize/index.json"))
first = next(iter(codes))
codes[first][0] = "<a_999>"
json.dump(codes, open(f"{sys.argv[1]}/bad.index.json", "w"))
EOF
gr --config=configs/rqkmeans.py:tiny --config.stages=data,tokenize --config.tokenizer.name=index_json \
   --config.tokenizer.index_json="$root/bad.index.json" --config.tokenizer.index_json_codebook_size=16 \
   --workdir="$root/f5a" > /dev/null 2> "$root/f5a.err"; show $? "$root/f5a.err" 1
gr "${sasrec[@]}" --config.train.learning_rate=-0.001 --workdir="$root/f5b" > /dev/null 2> "$root/f5b.err"
show $? "$root/f5b.err" 1

echo "6. errors without tracebacks"
gr "${sasrec[@]}" --config.train.batch_sise=8 --workdir="$root/f6" > /dev/null 2> "$root/f6.err"; show $? "$root/f6.err" 1
echo "  stderr lines: $(wc -l < "$root/f6.err")"
mkdir -p "$root/two"
for name in A B; do
  echo '{}' > "$root/two/$name.inter.json"; echo '{}' > "$root/two/$name.item.json"
done
gr --config=configs/sasrec.py:tiny --config.data.format=lcrec --config.data.dir="$root/two" \
   --workdir="$root/f6b" > /dev/null 2> "$root/f6b.err"; show $? "$root/f6b.err" 1
echo "workdirs under $root"
