"""CRBR (user modeling, approach B): Q-Former query states -> Gumbel-routed residual codebooks ->
W = beam_size queries per user, each searched exactly over the item tower's vectors and merged by
max score. Item tower, features and training budget as ``configs/two_tower.py``.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``: as ``configs/two_tower.py``.
The loss switches ``alignment_layers``, ``alignment_weight`` and ``balance_weight`` are compared
on Scientific in BENCHMARKS.md (user modeling: routing collapse at the defaults).
"""

import ml_collections

from configs import common, two_tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    m = two_tower.qformer_model("crbr")
    two_tower.add_qformer_losses(m)
    two_tower.add_item_tower(m)
    m.codebook_sizes = (64, 64, 64)  # M_l codes per routing layer; L = len (inference paths: prod M_l)
    m.crbr_mlp_dim = 256  # routing MLP width
    # Gumbel-softmax tau(step) = max(tau_min, tau_0 * exp(-rate * step)) (Jang et al., 2017); rate 0: fixed tau_0
    m.gumbel_temperature = 1.0  # tau_0
    m.gumbel_temperature_min = 0.5
    m.gumbel_decay_rate = 3e-4  # per optimizer step: tau reaches the floor after ~2,300 steps
    m.straight_through = True  # hard one-hot forward, soft gradient (False: soft mixture of codes)
    m.alignment_weight = 0.1  # alpha: sum_l ||v_l - unit(positive)||^2
    m.alignment_layers = "every"  # every: all partial states v_1..v_L (the design doc's loss) | last: v_L only
    m.balance_weight = 0.01  # beta: code-use load balance (minus the entropy of batch-mean routing)
    m.beam_size = 4  # W routing paths per user at retrieval, merged by max score per item
    c = two_tower.retrieval_config(m)
    if arg == "tiny":
        two_tower.use_tiny(c)
        c.model.update(codebook_sizes=(8, 8), crbr_mlp_dim=64)
    elif arg == "scientific":
        common.use_scientific(c)
        c.train.update(two_tower.SCIENTIFIC)
    return c
