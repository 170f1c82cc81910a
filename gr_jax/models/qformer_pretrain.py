"""Q-Former pre-training behind the trainer's model interface (``configs/qformer.py``).

- Loss: ``QFormerUserTower.loss`` alone: ITC (query set vs next item), masked-history
  reconstruction and query orthogonality, weighted by ``model.aux_*`` (the same knobs that add
  these losses to the two-tower and CRBR models as auxiliaries).
- Retrieval (``topk``): the ITC score itself, ``max_m cos(query state m, item)`` with the item
  side the Q-Former's learned projection of the frozen features, over the whole catalogue; the
  catalogue's item embeddings are computed once per evaluation round (``eval_params``). So the
  shared Recall/NDCG evaluation measures what pre-training learned, with no fine-tuning.
- Fine-tuning: ``two_tower`` and ``crbr`` start their Q-Former from such a run with
  ``--config.model.init_qformer_from=WORKDIR`` (the train stage loads it; fields in
  ``SHAPE_FIELDS`` must match).

Params: ``{"qformer"}``.
"""

from __future__ import annotations

import jax

from gr_jax.models.two_tower import QFormerBase
from gr_jax.models.user_tower import QFormer
from gr_jax.ops import l2_normalize

# Q-Former fields that shape its parameters: a fine-tuning run must match its pre-training run on these.
SHAPE_FIELDS = ("item_features", "num_queries", "embed_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                "history_read")


class QFormerPretrainRecommender(QFormerBase):
    """A Q-Former trained on its pre-training losses, retrieving by the ITC score."""

    def init(self, rng: jax.Array, batch: dict) -> dict:
        return {"qformer": self.qformer_tower.init(rng, self.qformer_batch(batch))}

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=None) -> tuple[jax.Array, dict]:
        del step
        return self.qformer_tower.loss(params["qformer"], self.qformer_batch(batch), rng)

    def item_embeddings(self, params: dict) -> jax.Array:
        """Unit ITC item embeddings of the whole catalogue ``[N, D]``."""
        return l2_normalize(self.qformer.apply({"params": params["qformer"]}, self.features,
                                               method=QFormer.embed_items))

    def query_set(self, params: dict, batch: dict) -> jax.Array:
        """The M unit query states ``[B, M, D]``: merged by max score, retrieval ranks by the ITC score."""
        return l2_normalize(self.query_states(params, batch))
