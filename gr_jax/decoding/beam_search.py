"""Trie-constrained beam search as one jitted ``lax.scan`` over SID depth.

The model supplies ``step_fn(cache, previous_codes, level) -> (log_probs [B, W, K], cache)``
where ``previous_codes`` is -1 at level 0 (the BOS step). Every cache leaf has leading
axes ``[B, W]`` and is re-gathered along the beam axis after each selection. Beams start
from a single live hypothesis, so a beam never holds a duplicate prefix.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

DEAD = -1e9  # score of beams that hold no valid hypothesis


def _gather_beams(tree: Any, parents: jax.Array) -> Any:
    def gather(x):
        index = parents.reshape(parents.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    return jax.tree_util.tree_map(gather, tree)


def beam_search(step_fn: Callable, cache: Any, children: jax.Array, batch_size: int, beam_size: int,
                unroll: bool = False, temperatures: jax.Array | None = None):
    """Returns (sid_rows ``[B, W]`` int32, -1 for dead beams; scores ``[B, W]``), best first.

    ``temperatures`` ``[L, max_prefixes]`` (optional): a beam whose level-``l`` prefix is ``p``
    decodes from ``softmax(log_probs / temperatures[l, p])`` (PRISM's ATS at decoding).
    ``unroll=True`` unrolls the depth loop; XLA's cost analysis counts a loop body once, so FLOP
    counts (MFU) are taken from the unrolled program.
    """
    num_levels, _, codebook_size = children.shape
    scores = jnp.full((batch_size, beam_size), DEAD).at[:, 0].set(0.0)
    prefixes = jnp.zeros((batch_size, beam_size), jnp.int32)
    previous = jnp.full((batch_size, beam_size), -1, jnp.int32)

    def level_step(carry, level):
        scores, prefixes, previous, cache = carry
        log_probs, cache = step_fn(cache, previous, level)
        kids = children[level][prefixes]  # [B, W, K]
        if temperatures is not None:
            tau = temperatures[level][prefixes]  # [B, W]
            log_probs = jax.nn.log_softmax(log_probs / tau[..., None], -1)
        candidates = jnp.where((kids >= 0) & (scores[..., None] > DEAD / 2), scores[..., None] + log_probs, DEAD)
        top_scores, flat = jax.lax.top_k(candidates.reshape(batch_size, -1), beam_size)
        parents, codes = flat // codebook_size, flat % codebook_size
        new_prefixes = jnp.take_along_axis(kids.reshape(batch_size, -1), flat, axis=1)
        alive = top_scores > DEAD / 2
        carry = (jnp.where(alive, top_scores, DEAD), jnp.where(alive, new_prefixes, 0),
                 codes.astype(jnp.int32), _gather_beams(cache, parents))
        return carry, None

    (scores, sids, _, _), _ = jax.lax.scan(level_step, (scores, prefixes, previous, cache), jnp.arange(num_levels),
                                           unroll=num_levels if unroll else 1)
    alive = scores > DEAD / 2
    return jnp.where(alive, sids, -1), jnp.where(alive, scores, -jnp.inf)
