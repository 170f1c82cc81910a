"""End-to-end latent tokenization (design doc §5, experimental; ``gr_jax.models.latent``): a residual
routing transformer on the Q-Former user tower picks L Gumbel-softmax codes from codebooks it shares
with the item tower, trained with the hierarchy-guarantee protocol; retrieval beam-searches the
item codes. Q-Former, item tower, features and training budget as ``configs/two_tower.py``.

Variants: default (synthetic), ``:tiny`` (tests; MiniLM text features only), ``:scientific``: as
``configs/two_tower.py``.
Every protocol part is a switch: a weight of 0 turns it off, ``residual_targets=False`` trains
the sum of the codes only (§5.2's objective). The loss weights are untuned (the doc gives none).
"""

import ml_collections

from configs import common, two_tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    m = two_tower.qformer_model("latent")
    two_tower.add_qformer_losses(m)
    two_tower.add_item_tower(m)  # item_dim E, the item tower, InfoNCE temperature, aux_weight, init_qformer_from
    m.num_levels = 3  # L routing blocks, one code each (>= 2)
    m.codebook_size = 64  # K codes per level, shared by the user and item towers (K ** L < 2 ** 31)
    m.router_mlp_dim = 256  # Projector_l width
    m.block_num_heads = 4  # the refinement block shared by the levels (a level embedding tells them apart)
    m.block_mlp_dim = 256
    # Gumbel-softmax tau(step) = max(tau_min, tau_0 * exp(-rate * step)), as configs/crbr.py; rate 0: fixed tau_0
    m.gumbel_temperature = 1.0  # tau_0
    m.gumbel_temperature_min = 0.5
    m.gumbel_decay_rate = 3e-4  # per optimizer step: tau reaches the floor after ~2,300 steps
    m.straight_through = True  # hard one-hot forward, soft gradient (False: soft mixture of codes)
    m.num_sampled_negatives = 256  # uniform catalogue negatives of the InfoNCE, on top of the in-batch ones
    # Hierarchy-guarantee protocol (design doc §5.4); weight 0 = off
    m.residual_weight = 1.0  # sum_l ||q_l - t_l||^2
    m.residual_targets = True  # t_0 = y, t_l = t_{l-1} - sg(q_{l-1}) | False: ||sum_l q_l - y||^2 only
    m.margin_weight = 1.0  # progressive margin sum_k max(0, L_{k+1} - L_k + delta)
    m.margin_delta = 0.002  # delta, in units of ||y||^2 = 1 (item vectors concentrate: level 0 takes most of it)
    m.entropy_weight = 1.0  # minus the entropy of batch-mean code use (user routing and item assignment)
    m.assignment_temperature = 0.1  # items' soft code assignment softmax(-||r - c||^2 / t) for the entropy
    m.orthogonality_weight = 0.1  # sum_l cos^2(q_l, q_{l+1})
    # Dual-tower shared codebooks (§5.4.4)
    m.match_weight = 1.0  # cross-entropy of the user's code distributions against the target item's codes
    m.quantization_weight = 1.0  # the items' VQ loss: ||sg(r) - c||^2 + beta ||r - sg(c)||^2 per level
    m.commitment_beta = 0.25  # beta
    m.reconstruction_weight = 1.0  # the item decoder's squared error reconstructing the item features from the codes
    m.user_trains_codebooks = False  # False: the item tower alone fits the codebooks (the user side reads sg(C))
    m.kmeans_init = True  # codebooks start as the residual k-means of the initial item vectors (False: random)
    # Retrieval: trie-constrained beam search over the item codes, then exact scores of the beams' items
    m.beam_size = 50  # W code paths per user
    m.leaf_size = 8  # items kept per code path (a collision group keeps its lowest item ids)
    c = two_tower.retrieval_config(m)
    if arg == "tiny":
        two_tower.use_tiny(c)
        c.features.cf.enabled = False  # MiniLM text only: no CF model to train, the test stays fast
        c.model.update(item_features="text", codebook_size=8, router_mlp_dim=64, block_num_heads=2, block_mlp_dim=64,
                       beam_size=20)
    elif arg == "scientific":
        common.use_scientific(c)
        c.train.update(two_tower.SCIENTIFIC)
    return c
