"""CRBR (user modeling, approach B): Q-Former query states -> Gumbel-routed residual codebooks ->
W = beam_size queries per user, each searched exactly over the item tower's vectors and merged by
max score. Item tower, features and training budget as ``configs/two_tower.py``.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (Scientific on 2 CPU cores,
whole pipeline within 45 min: features ~10 min (MiniLM + the 30-epoch SASRec CF table),
training 25 epochs of 131 steps at batch 256, ~25 min at the ~2.4 steps/s measured on a loaded 2-core
machine for two_tower, ~3.5 for crbr; estimated from synthetic-data throughput, not yet run on Scientific).
"""

import ml_collections

from configs import two_tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = two_tower.base_config("crbr", arg)
    m = c.model
    # The Set Transformer head is two_tower's; CRBR pools the query states itself.
    del m["set_num_heads"], m["set_mlp_dim"], m["num_sampled_negatives"]
    m.codebook_sizes = (64, 64, 64)  # M_l codes per routing layer; L = len (inference paths: prod M_l)
    m.crbr_mlp_dim = 256  # routing MLP width
    m.gumbel_temperature = 1.0  # fixed Gumbel-softmax tau (the trainer's loss does not see the step)
    m.straight_through = True  # hard one-hot forward, soft gradient (False: soft mixture of codes)
    m.alignment_weight = 0.1  # alpha: sum_l ||v_l - unit(positive)||^2
    m.balance_weight = 0.01  # beta: code-use load balance (minus the entropy of batch-mean routing)
    m.beam_size = 4  # W routing paths per user at retrieval, merged by max score per item
    if arg == "tiny":
        m.codebook_sizes = (8, 8)
        m.crbr_mlp_dim = 64
    return c
