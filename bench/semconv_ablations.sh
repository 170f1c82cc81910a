#!/bin/bash
# Semantic Convergence's ablations on Scientific at one budget (BENCHMARKS.md): the full system,
# without the alignment loss, without each task, LoRA instead of full fine-tuning, and SASRec's item
# table instead of DCCF's as the CF source. Each variant fits its tokenizer and trains from scratch.
#
#   EPOCHS=3 bash bench/semconv_ablations.sh
#
# Needs the two features stages (DCCF and SASRec CF tables, the LLM vocabulary) first:
#   python -m gr_jax.main --config=configs/semconv.py:scientific --config.stages=data,features --workdir=runs/semconv-sci
#   python -m gr_jax.main --config=configs/semconv.py:scientific --config.stages=data,features \
#     --config.features.cf.source=sasrec --workdir=runs/semconv-sci-sasrec-feat
# One run at a time (P, default 1: XLA processes sharing 2 cores slow each other down more than
# they gain; three at once trained at a quarter of one's speed in total). Results:
# OUT/<name>/eval/metrics.json and OUT-sasrec/sasrec_cf/eval/metrics.json.
set -o pipefail
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
C=configs/semconv.py:scientific
EPOCHS=${EPOCHS:-3}; OUT=${OUT:-runs/semconv-abl}
# Validation NDCG@10 comes from the train stage's last evaluation; the eval stage scores the test split.
BUDGET="--config.train.num_epochs=$EPOCHS --config.train.eval_every_epochs=$EPOCHS --config.eval.splits=test"
cd "$(dirname "$0")/.."
FEATURES=runs/semconv-sci/features OUT=$OUT P=${P:-1} T=9000 \
  TOKS="align|$C|;noalign|$C|--config.tokenizer.aligned.align_weight=0" \
  RUNS=${RUNS:-"full|$C|align|;no_align|$C|noalign|;lora_r8|$C|align|--config.model.lora_rank=8;\
no_seq|$C|align|--config.model.tasks.seq=0;no_text|$C|align|--config.model.tasks.item2code=0 \
--config.model.tasks.code2item=0;no_query|$C|align|--config.model.tasks.query=0;\
no_negative|$C|align|--config.model.tasks.negative=0"} bash bench/sweep.sh $BUDGET
FEATURES=runs/semconv-sci-sasrec-feat/features OUT=$OUT-sasrec T=9000 \
  TOKS="sasrec|$C|--config.features.cf.source=sasrec" \
  RUNS="sasrec_cf|$C|sasrec|--config.features.cf.source=sasrec" bash bench/sweep.sh $BUDGET
