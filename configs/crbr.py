"""CRBR (user modeling, approach B): Q-Former query states -> Gumbel-routed residual codebooks ->
W = beam_size queries per user, each searched exactly over the item tower's vectors and merged by
max score. Item tower, features and training budget as ``configs/two_tower.py``.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``: as ``configs/two_tower.py``.
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
    # Gumbel-softmax tau(step) = max(tau_min, tau_0 * exp(-rate * step)) (Jang et al., 2017); rate 0: fixed tau_0
    m.gumbel_temperature = 1.0  # tau_0
    m.gumbel_temperature_min = 0.5
    m.gumbel_decay_rate = 3e-4  # per optimizer step: tau reaches the floor after ~2,300 steps
    m.straight_through = True  # hard one-hot forward, soft gradient (False: soft mixture of codes)
    m.alignment_weight = 0.1  # alpha: sum_l ||v_l - unit(positive)||^2
    m.alignment_layers = "every"  # every: all partial states v_1..v_L (the design doc's loss) | last: v_L only
    # beta: code-use load balance (minus the entropy of batch-mean routing). On Scientific the default
    # alpha/beta leave routing layers 2-3 on 1-3 of their 64 codes; beta=1.0 or alpha=0 uses them all,
    # alignment_layers=last a third or more (BENCHMARKS.md, user modeling).
    m.balance_weight = 0.01
    m.beam_size = 4  # W routing paths per user at retrieval, merged by max score per item
    if arg == "tiny":
        m.codebook_sizes = (8, 8)
        m.crbr_mlp_dim = 64
    return c
