"""Beam search as one jitted ``lax.scan`` over depth: SID decoding and CRBR's routing paths.

One core serves both. The model supplies ``step_fn(cache, previous_tokens, level) -> (log_probs
[B, W, K], cache)`` (``previous_tokens`` is -1 at level 0, the BOS step); every cache leaf has
leading axes ``[B, W]`` and is re-gathered along the beam axis after each selection. Which tokens a
hypothesis may take next comes from ``children_fn(level, prefixes) -> [B, W, K]``: the id of the
extended prefix, or -1 where the token is not allowed. ``trie_children`` reads a trie's tables,
dense or compact (SID decoding: a hypothesis's prefix is its trie node); ``key_children`` reads the
sorted prefix keys of ``trie.prefix_keys`` (SIDs computed inside jit, e.g. the latent model's item
codes: a prefix is its mixed-radix key); ``free_children`` allows every code of a level's codebook
(CRBR: every routing path exists, prefixes stay 0). Beams start from a single live hypothesis, so
a beam never holds a duplicate prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp

from gr_jax.decoding.trie import TrieTables
from gr_jax.ops import NEG_INF

StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
ChildrenFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class BeamState:
    """The beams of a batch, best first after every level."""

    scores: jax.Array  # [B, W] summed log-probabilities; NEG_INF for a beam that holds no hypothesis
    prefixes: jax.Array  # [B, W] int32 constraint state (trie node; the SID row after the last level)
    tokens: jax.Array  # [B, W, L] int32 tokens chosen so far
    cache: Any  # the model's decoding state, leading axes [B, W]

    @property
    def alive(self) -> jax.Array:
        return self.scores > NEG_INF / 2

    def results(self) -> tuple[jax.Array, jax.Array]:
        """(final prefixes ``[B, W]`` — SID rows under a trie — with -1 for dead beams, scores with -inf)."""
        return jnp.where(self.alive, self.prefixes, -1), jnp.where(self.alive, self.scores, -jnp.inf)


def gather_beams(tree: Any, parents: jax.Array) -> Any:
    """Every leaf ``[B, W, ...]`` re-indexed along the beam axis by ``parents [B, W]``."""

    def gather(x):
        index = parents.reshape(parents.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    return jax.tree_util.tree_map(gather, tree)


def trie_children(tables: TrieTables) -> ChildrenFn:
    """Constraint of a trie's tables (``gr_jax.decoding.trie``, dense or compact)."""
    return tables.children_of


def key_children(sorted_keys: jax.Array, codebook_size: int) -> ChildrenFn:
    """Constraint of sorted prefix keys ``[L, N]`` (``trie.prefix_keys``, each level sorted): code ``c``
    extends prefix key ``p`` at level l when some item's level-l key is ``p·K + c``, found by binary
    search (memory O(N·L), whatever the number of possible prefixes)."""

    def children(level, prefixes):
        keys = prefixes[..., None] * codebook_size + jnp.arange(codebook_size, dtype=jnp.int32)
        level_keys = sorted_keys[level]
        found = level_keys[jnp.minimum(jnp.searchsorted(level_keys, keys), level_keys.shape[0] - 1)] == keys
        return jnp.where(found, keys, -1)

    return children


def free_children(codebook_sizes: tuple[int, ...]) -> ChildrenFn:
    """No constraint but the codebook size of each level (codebooks padded to the largest)."""
    sizes, largest = jnp.asarray(codebook_sizes), max(codebook_sizes)

    def children(level, prefixes):
        allowed = jnp.arange(largest) < sizes[level]
        return jnp.broadcast_to(jnp.where(allowed, 0, -1), prefixes.shape + (largest,)).astype(jnp.int32)

    return children


def beam_search(step_fn: StepFn, cache: Any, children_fn: ChildrenFn, num_levels: int, batch_size: int,
                beam_size: int, temperatures: jax.Array | None = None, unroll: bool = False) -> BeamState:
    """The final ``BeamState`` after ``num_levels`` steps.

    ``temperatures`` ``[L, max_prefixes]`` (optional): a beam whose level-``l`` prefix is ``p``
    decodes from ``softmax(log_probs / temperatures[l, p])`` (PRISM's ATS at decoding).
    ``unroll=True`` unrolls the depth loop; XLA's cost analysis counts a loop body once, so FLOP
    counts (MFU) are taken from the unrolled program.
    """
    state = BeamState(scores=jnp.full((batch_size, beam_size), NEG_INF).at[:, 0].set(0.0),
                      prefixes=jnp.zeros((batch_size, beam_size), jnp.int32),
                      tokens=jnp.zeros((batch_size, beam_size, num_levels), jnp.int32), cache=cache)

    def level_step(state: BeamState, level):
        last = jax.lax.dynamic_index_in_dim(state.tokens, jnp.maximum(level - 1, 0), axis=2, keepdims=False)
        log_probs, cache = step_fn(state.cache, jnp.where(level == 0, -1, last), level)
        kids = children_fn(level, state.prefixes)  # [B, W, K]
        codebook_size = kids.shape[-1]
        if temperatures is not None:
            tau = temperatures[level][state.prefixes]  # [B, W]
            log_probs = jax.nn.log_softmax(log_probs / tau[..., None], -1)
        allowed = (kids >= 0) & state.alive[..., None]
        candidates = jnp.where(allowed, state.scores[..., None] + log_probs, NEG_INF)
        top_scores, flat = jax.lax.top_k(candidates.reshape(batch_size, -1), beam_size)
        parents, tokens = flat // codebook_size, (flat % codebook_size).astype(jnp.int32)
        prefixes = jnp.take_along_axis(kids.reshape(batch_size, -1), flat, axis=1)
        alive = top_scores > NEG_INF / 2
        history = gather_beams(state.tokens, parents).at[:, :, level].set(tokens)
        return BeamState(scores=jnp.where(alive, top_scores, NEG_INF), prefixes=jnp.where(alive, prefixes, 0),
                         tokens=history, cache=gather_beams(cache, parents)), None

    state, _ = jax.lax.scan(level_step, state, jnp.arange(num_levels), unroll=num_levels if unroll else 1)
    return state
