"""Semantic Convergence: DCCF item vectors -> LLM-aligned 4-level codes -> a Llama-style LLM fine-tuned
on four tasks -> beam search over code tokens -> a served top-K cache (SPEC §5).

Stages: the features stage trains DCCF (``features.cf.source='dccf'``) and the LLM's vocabulary
(a byte-level BPE on item texts + prompt templates, with the from-scratch token table); the
tokenizer is the aligned RQ-VAE (``tokenizer.aligned``, 4 × 256 codes over the DCCF vectors, pulled
toward each item's title in the token-embedding space); the model is ``gr_jax/models/semconv.py``;
the cache stage writes every user's top-K (``gr_jax/serving``).

Ablations (switches): ``--config.tokenizer.aligned.align_weight=0`` (no alignment loss, random
code-token rows), ``--config.model.tasks.<task>=0`` (drop a task), ``--config.features.cf.source=
sasrec`` (SASRec's table as the CF source), ``--config.model.lora_rank=8`` (LoRA on the attention
projections; the transformer's base weights freeze, the token table stays trainable for the new
code rows), ``--config.model.checkpoint=DIR`` with ``--config.features.llm.checkpoint=DIR`` (start
from a local Hugging Face Llama/Qwen2 checkpoint).

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (a from-scratch LLM on 2 CPU cores).
"""

import ml_collections

from configs import common, dccf, features, tokenizers

# Rows of each batch per task, relative (LC-Rec mixes every sequence with one pass over the items
# per text task; here the sequential task keeps about half of every batch).
TASKS = {"seq": 1.0, "item2code": 0.25, "code2item": 0.25, "query": 0.25, "negative": 0.25}
TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
            "head_dim": 16, "beam_size": 10, "history_items": 5, "max_title_tokens": 8, "max_query_tokens": 8}
# Sized for 2 CPU cores: ~1.3M non-embedding parameters, histories of the last 10 items (40 codes).
SCIENTIFIC_LLM = {"hidden_size": 128, "intermediate_size": 344, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                  "head_dim": 32, "history_items": 10}
SCIENTIFIC_TRAIN = {"batch_size": 128, "num_epochs": 6, "learning_rate": 2e-3, "warmup_steps": 200,
                    "weight_decay": 0.01, "eval_every_epochs": 2}


def model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "semconv"
    c.checkpoint = ""  # a local Hugging Face Llama/Qwen2 dir to fine-tune; '' = the from-scratch LLM below
    c.hidden_size = 256  # from scratch (= features.llm.embed_dim)
    c.intermediate_size = 688
    c.num_layers = 4
    c.num_heads = 4
    c.num_kv_heads = 2  # grouped-query attention
    c.head_dim = 64
    c.rope_theta = 10_000.0
    c.rms_norm_eps = 1e-6
    c.tie_word_embeddings = True
    c.lora_rank = 0  # > 0: LoRA adapters on lora_targets, base transformer frozen
    c.lora_alpha = 16.0
    c.lora_targets = ("q_proj", "v_proj")
    c.history_items = 20  # most recent history items in the sequential and negative prompts
    c.num_candidates = 5  # negative task: the target and num_candidates - 1 sampled negatives
    c.max_title_tokens = 24
    c.max_query_tokens = 24
    c.tasks = ml_collections.ConfigDict(TASKS)  # batch share per task; 0 drops a task
    c.beam_size = 20  # LC-Rec decodes with 20 beams
    c.trie = "auto"  # constrained decoding tables: dense [L, prefixes, K] (small catalogues), compact O(L·SIDs) or auto
    c.vocab_multiple = 1  # pad the vocabulary to a multiple of this (128 splits it over a model axis)
    common.add_precision(c)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config("semconv", stages="data,features,tokenize,train,eval,cache")
    c.features = features.features_config(text=False, cf=True)
    c.features.cf.source = "dccf"
    c.features.llm.enabled = True
    c.tokenizer = tokenizers.tokenizer_config("aligned", embeddings="cf")
    c.tokenizer.collisions = "reassign"  # 4 code tokens per item, no de-dup digit (LC-Rec's SIDs are collision-free)
    c.model = model_config()
    c.features.llm.embed_dim = c.model.get_ref("hidden_size")
    c.train.update(learning_rate=1e-3, warmup_steps=200, weight_decay=0.01, num_epochs=10)
    if arg == "tiny":
        common.use_tiny(c)
        tokenizers.shrink_for_tiny(c.tokenizer)
        dccf.shrink_for_tiny(c.features.cf.dccf.model, c.features.cf.dccf.train)
        c.features.llm.vocab_size = 400
        c.model.update(TINY_LLM)
    elif arg == "scientific":
        common.use_scientific(c)
        c.model.update(SCIENTIFIC_LLM)
        c.train.update(SCIENTIFIC_TRAIN)
    return c
