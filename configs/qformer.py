"""Q-Former pre-training (user modeling): ITC + masked-history reconstruction + query
orthogonality over frozen MiniLM text and SASRec CF item features; evaluated by retrieving with
the ITC score (max over the M query states) over the full catalogue.

Variants as ``configs/two_tower.py`` (default synthetic, ``:tiny``, ``:scientific``, same budget).
``num_queries`` ... ``history_read`` shape the encoder (a fine-tuning run must match them),
``aux_temperature`` / ``aux_mask_ratio`` / ``aux_reconstruction_weight`` /
``aux_orthogonality_weight`` weigh the pre-training losses.
"""

import ml_collections

from configs import common, two_tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    m = two_tower.qformer_model("qformer")
    two_tower.add_qformer_losses(m)
    c = two_tower.retrieval_config(m)
    if arg == "tiny":
        two_tower.use_tiny(c)
    elif arg == "scientific":
        common.use_scientific(c)
        c.train.update(two_tower.SCIENTIFIC)
    return c
