"""Generative Action Transformer (user-modeling design doc §4): a decoder-only transformer over
the user's Q-Former profile and interleaved item / action tokens; retrieval generates the next
item's RQ-KMeans codes after a target action, ranking predicts the action on a given item.

Variants: default (a synthetic exposure log: a logging policy shows items, clicks at a few
percent), ``:tiny`` (tests), ``:scientific`` (Scientific, all events positive, at TIGER's
``:scientific`` budget), ``:stage2`` (stage 2 of the curriculum, below).
``--config.model.init_qformer_from=WORKDIR`` starts the Q-Former from a ``configs/qformer.py`` run
with the same Q-Former fields (frozen by ``train.frozen``).

Two-stage curriculum (design doc §4.3.6): stage 1 is the default run (full model, 1:1); stage 2
starts from its best params and shifts the positive:negative ratio 1:2 -> 1:5 -> 1:10 with the
transformer backbone frozen (only the contextualized residuals and the action head train)::

    python -m gr_jax.main --config=configs/gat.py --workdir=runs/gat-s1
    python -m gr_jax.main --config=configs/gat.py:stage2 --config.model.init_from=runs/gat-s1 --workdir=runs/gat-s2

Stage 2 reruns the data, features and tokenize stages in its own workdir (deterministic; its SIDs
are checked against stage 1's). Either stage resumes from its latest checkpoint when rerun.

Steering (§4.4): ``model.seed_prompt_prob``/``model.explore_prob``/``model.category_prompt_prob``
train the seed-item prompt, the ``[EXPLORE]`` token and the category soft prompts
(``GATRecommender.steer`` uses them; ``model.steer_explore`` and ``model.steer_category`` steer an
eval run's lists). Distilled sampler (§4.3.1):
``--config.model.sampler_dim=128 --config.model.init_from=runs/gat-s1`` trains only a one-shot
sampler head on that run's frozen model; the eval lists are then the sampler's.
"""

import ml_collections

from configs import common, features, tiger, tokenizers, two_tower


def model_config() -> ml_collections.ConfigDict:
    m = two_tower.qformer_model("gat")  # the user's Q-Former (M = 32 queries): the system prompt
    m.item_features = "text"  # frozen item features of the Q-Former and of E_static
    m.init_qformer_from = ""  # a finished configs/qformer.py run's WORKDIR ('' = random init)
    m.decoder = ml_collections.ConfigDict()  # the decoder-only transformer (RoPE, causal, KV cache)
    m.decoder.embed_dim = 128
    m.decoder.num_layers = 2
    m.decoder.num_heads = 4
    m.decoder.head_dim = 32
    m.decoder.num_kv_heads = 0  # 0 = num_heads
    m.decoder.mlp_dim = 512
    m.decoder.dropout = 0.1
    m.decoder.dropout_impl = "hash"
    m.decoder.rope_base = 10_000.0
    m.contextual_residual = True  # E = (1 - g) E_static + g E_learn; False: E_static only
    m.gate_hidden = 64  # width of the residual gate's MLP
    m.target_action = "click"  # the intent retrieval conditions on
    m.negatives_per_positive = 1  # training keeps 1:k positive:negative targets (k = this; 0 keeps all)
    m.negative_sample_seed = 0
    m.negative_item_weight = 0.0  # weight of -log(1 - P(item | history, click)) on skipped targets (§4.3.4)
    m.curriculum = ()  # negatives per positive of each training phase, in order (stage 2: (2, 5, 10)); () = one phase
    m.freeze_backbone = False  # stage 2: train only the contextualized residuals and the action head
    m.init_from = ""  # a finished gat run's WORKDIR whose best params training starts from ('' = fresh init)
    # Steering (§4.4): training probabilities of the learned prompts (0 = not trained), and the eval stage's prompt.
    m.seed_prompt_prob = 0.0  # a seed item + [SEED] before a clicked target, the seed among its nearest items
    m.seed_neighbours = 10  # the seed's candidates: the target's nearest items in the item feature table
    m.explore_prob = 0.0  # [EXPLORE] before a clicked target outside the categories of the engaged history
    m.category_prompt_prob = 0.0  # the target category's soft prompt before a clicked target
    m.category_level = 0  # the category level of soft prompts and novelty (0 = top)
    m.steer_explore = False  # eval lists after [EXPLORE] + [CLICK]
    m.steer_category = -1  # eval lists after this category's soft prompt (-1 = none)
    m.sampler_dim = 0  # > 0: train only a distilled one-shot sampler head of this width on model.init_from's model
    m.beam_size = 20
    m.trie = "auto"  # constrained decoding tables: dense [L, prefixes, K] (small catalogues), compact O(L·SIDs) or auto
    m.exclude_history = False  # drop items the user already engaged with from the retrieved list
    m.engaged_history = True  # also read the last max_history engaged events, not only the last events
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific", "stage2"))
    c = common.base_config("gat", stages="data,features,tokenize,train,eval")
    c.data.synthetic.exposure_log = True
    c.data.targets = "positive"  # valid/test targets are each user's last two clicks
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config("rq_kmeans", embeddings="text")
    c.tokenizer.rq_kmeans.residual = "tangent"  # no hub codes at deeper levels (BENCHMARKS.md, codebook health)
    # Residual k-means on MiniLM text leaves more than 0.8 of the energy at its third level
    # (BENCHMARKS.md, codebook health): usage, perplexity and collision limits still apply.
    c.tokenizer.health.max_energy_ratio = -1.0
    c.model = model_config()
    c.train.update(tiger.TRAIN)
    c.train.frozen = ("qformer",)
    c.train.num_epochs = 10
    c.train.eval_every_epochs = 2
    if arg in (None, "stage2"):
        c.tokenizer.rq_kmeans.codebook_size = 64  # 1,000 synthetic items (as configs/prism.py)
    elif arg == "tiny":
        common.use_tiny(c)
        c.data.synthetic.update(exposures_per_event=8, target_ctr=0.15)
        tokenizers.shrink_for_tiny(c.tokenizer)
        c.model.update({k: v for k, v in two_tower.TINY_MODEL.items() if k in c.model})
        c.model.decoder.update(embed_dim=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64)
        c.model.update(gate_hidden=16, beam_size=10)
    elif arg == "scientific":
        common.use_scientific(c)
        c.train.update(tiger.SCIENTIFIC)
        c.train.frozen = ()  # no pre-trained Q-Former at this budget: trained end to end
    if arg == "stage2":
        use_stage2(c)
    return c


def use_stage2(c: ml_collections.ConfigDict) -> None:
    """Stage 2 of the curriculum on top of a stage-1 config: the ratios 1:2, 1:5, 1:10 (equal steps
    each) with the backbone frozen, from ``model.init_from`` (required: a finished stage-1 run).
    Validation runs once, at the end: the checkpoint kept is the 1:10 one (selecting by retrieval
    NDCG@10 along the way would keep an early phase's)."""
    c.model.update(curriculum=(2, 5, 10), freeze_backbone=True)
    c.train.num_epochs = 3  # of the mean phase (1:5.7): about as many examples as stage 1's 10 epochs at 1:1
    c.train.eval_every_epochs = 1_000_000
