"""PRISM (Fang et al., 2026): semantic IDs from text + CF embeddings and the Integrated Semantic
Recommender (TIGER's T5 + DSI feature fusion, SSA codebook alignment, ATS temperatures).

Variants: default (the README's main job: the whole pipeline on the 1,000-item synthetic catalogue
with a laptop-sized model), ``:tiny`` (tests), ``:scientific`` (TIGER's CPU budget, for an
equal-budget comparison), ``:scientific_full`` (TIGER's paper-scale budget).
Every PRISM component is a switch: ``--config.model.dsi=False``, ``--config.model.ssa=False``,
``--config.model.ats=False``, ``--config.tokenizer.prism.acd=False``, ``--config.tokenizer.prism.hsa=False``
give the paper's ablations.
"""

import ml_collections

from configs import common, features, sasrec, tiger, tokenizers


def model_config() -> ml_collections.ConfigDict:
    c = tiger.model_config()  # T5-tiny-sized: 4+4 layers, d 128, d_ff 1024, 6 heads
    c.name = "prism"
    # DSI: mix code embedding, text and CF embeddings (level-specific projections) in the encoder input.
    c.dsi = True
    c.dsi_fusion = "moe"  # moe (router + experts) | gate (per-token softmax over the three sources)
    c.dsi_depth_specific = True  # one text/CF projection per SID level (False: shared)
    c.num_experts = 4
    c.expert_dim = 256  # d_moe
    c.top_k = 2  # experts per token
    c.router_noise = True  # noisy top-k gating in training
    c.dsi_balance_weight = 0.01  # MoE load-balancing loss weight
    # Fuse each distinct history item of a batch once (noise and dropout keyed by item, so the values
    # equal fusing every slot, the False reference); a speed switch, not a model change.
    c.dsi_per_item = True
    # Its static row counts grow by this factor (the distinct items fill the smallest that holds them):
    # nearer 1 wastes fewer padded rows per step and compiles more branches.
    c.dsi_bucket_growth = 2 ** 0.25
    # SSA: predict each level's codebook vector from the decoder state (1 - cos loss).
    c.ssa = True
    c.ssa_weight = 5e-4  # gamma
    # ATS: training logits of level l divided by tau(K), K = children of the target's prefix.
    c.ats = True
    c.ats_alpha = 0.5
    c.ats_tau_min = 0.1
    c.ats_tau_max = 2.0
    c.ats_k_ref = 50.0
    c.ats_start_level = 0  # levels before this one keep tau = 1
    # Also divide decoding logits by tau (beam search reads the prefix's child count). The paper applies
    # ATS in training only; why decoding with them is the default: BENCHMARKS.md, PRISM ablations.
    c.ats_at_inference = True
    c.ats_mean_center = False  # rescale all temperatures to mean 1 (official option, off by default)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific", "scientific_full"))
    c = common.base_config("prism", stages="data,features,tokenize,train,eval")
    c.features = features.features_config(text=True, cf=True)
    # Purified semantic quantizer (ACD gate + HSA anchors) over text and CF embeddings.
    c.tokenizer = tokenizers.tokenizer_config("prism", embeddings="text+cf")
    # HSA anchors level 1 to the few top categories, so fewer level-1 codes are used than the generic
    # 0.9 limit expects (BENCHMARKS.md, PRISM quantizer); collisions are still checked.
    c.tokenizer.health.min_usage = 0.5
    c.model = model_config()
    c.train.update(tiger.TRAIN)
    if not arg:
        # Under 10 minutes on 2 CPU cores: the laptop model, 64-code levels, 5 epochs (the MoE fusion
        # dominates this model's step: bench/train_throughput.py --model prism).
        c.features.cf.train.num_epochs = 10
        c.tokenizer.prism.codebook_size = 64
        c.model.update(tiger.LAPTOP_MODEL)
        c.model.expert_dim = 128
        c.train.update(num_epochs=5, eval_every_epochs=5)
    elif arg == "tiny":
        common.use_tiny(c)
        sasrec.shrink_for_tiny(c.features.cf.model, c.features.cf.train)
        tokenizers.shrink_for_tiny(c.tokenizer)
        c.model.update(tiger.TINY_MODEL)
        c.model.expert_dim = 32
    elif arg == "scientific":
        common.use_scientific(c)
        c.model.item_level_history = True
        c.train.update(tiger.SCIENTIFIC)
    elif arg == "scientific_full":
        common.use_scientific(c)
        c.train.update(tiger.SCIENTIFIC_FULL)
    return c
