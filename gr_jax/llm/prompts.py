"""The four supervised tasks of Semantic Convergence as jittable prompt builders.

Every task turns rows of a training batch (a user's recent history and the next item) into a
prompt and a response over one vocabulary of text and item code tokens (``vocab.CodeVocab``):

=============  ==========================================================  ====================
task           prompt                                                      response
=============  ==========================================================  ====================
``seq``        the history's codes, "predict the next item"                 the target's codes
``item2code``  the target's title                                          its codes
``code2item``  the target's codes                                          its title
``query``      an intent built from the target's category path and title   its codes
``negative``   the history's codes and candidates (target + negatives)     the target's codes
=============  ==========================================================  ====================

(``item2code`` and ``code2item`` are the two directions of the paper's text task.) Templates are
tokenized once; per-item text (titles, queries) comes from padded host tables, so building a
batch is gathers and a sort on device. A prompt is left-packed (padding first, so every prompt
ends with its template's last token) and the response right-padded; ``Example`` holds both.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from gr_jax.llm.vocab import EOS, PAD, CodeVocab, encode_padded, special_id

TASKS = ("seq", "item2code", "code2item", "query", "negative")
CODE_RESPONSE_TASKS = ("seq", "item2code", "query", "negative")

TEMPLATES = {
    "seq": ("The user interacted with these items in order:", "Predict the next item the user will interact with:"),
    "item2code": ('An item is titled "', '". What is its item code?'),
    "code2item": ("What is the title of the item", "?"),
    "query": ("A user searches for", ". Which item fits the request?"),
    "negative": ("The user interacted with these items in order:", "Which of these candidates will the user "
                 "choose next:", "?"),
}


def template_texts() -> list[str]:
    """Every template string (the from-scratch text tokenizer is trained on them too)."""
    return [part for parts in TEMPLATES.values() for part in parts]


def build_queries(titles: list[str], categories: list[tuple[str, ...]], seed: int, words: int = 3) -> list[str]:
    """A natural-language intent per item: its two finest category levels and up to ``words``
    title words drawn without replacement (seeded), e.g. "lab gloves in Safety, like nitrile
    powder-free"."""
    rng = np.random.default_rng(seed)
    queries = []
    for title, path in zip(titles, categories):
        tokens = [w for w in title.split() if any(ch.isalpha() for ch in w)]
        picked = [tokens[i] for i in sorted(rng.choice(len(tokens), min(words, len(tokens)), replace=False))] \
            if tokens else []
        where = " in " + ", ".join(reversed(path[-2:])) if len(path) else ""
        queries.append(f"something{where}" + (", like " + " ".join(picked) if picked else ""))
    return queries


@flax.struct.dataclass
class Example:
    """A batch of one task: ``prompt [B, P]`` left-packed, ``response [B, R]`` right-padded."""

    prompt: jax.Array
    prompt_valid: jax.Array
    response: jax.Array
    response_valid: jax.Array

    @property
    def tokens(self) -> jax.Array:
        return jnp.concatenate([self.prompt, self.response], 1)

    @property
    def valid(self) -> jax.Array:
        return jnp.concatenate([self.prompt_valid, self.response_valid], 1)


def left_pack(tokens: jax.Array, valid: jax.Array, pad: int) -> tuple[jax.Array, jax.Array]:
    """Moves each row's valid tokens to the end, keeping their order (padding first)."""
    order = jnp.argsort(valid, axis=1, stable=True)
    packed_valid = jnp.take_along_axis(valid, order, 1)
    return jnp.where(packed_valid, jnp.take_along_axis(tokens, order, 1), pad), packed_valid


@dataclasses.dataclass(frozen=True)
class PromptTables:
    """Device constants the builders gather from."""

    item_codes: jax.Array  # [N, L] code token ids of every item
    titles: jax.Array  # [N, T] title token ids (pad-filled) and their mask
    title_mask: jax.Array
    queries: jax.Array  # [N, Q] intent token ids and their mask
    query_mask: jax.Array
    templates: dict  # task -> tuple of template token-id arrays
    pad: int
    eos: int


def make_tables(tokenizer: tokenizers.Tokenizer, code_vocab: CodeVocab, codes: np.ndarray, titles: list[str],
                queries: list[str], max_title_tokens: int, max_query_tokens: int) -> PromptTables:
    """Tokenizes the templates and the per-item texts once (``codes [N, L]``: each item's SID)."""
    title_ids, title_mask = encode_padded(tokenizer, titles, max_title_tokens)
    query_ids, query_mask = encode_padded(tokenizer, [" " + q for q in queries], max_query_tokens)  # after "for"
    encode = lambda text: np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
    templates = {task: tuple(jnp.asarray(encode(part)) for part in parts) for task, parts in TEMPLATES.items()}
    return PromptTables(jnp.asarray(code_vocab.token_ids(np.asarray(codes, np.int32)), jnp.int32),
                        jnp.asarray(title_ids), jnp.asarray(title_mask), jnp.asarray(query_ids),
                        jnp.asarray(query_mask), templates, special_id(tokenizer, PAD), special_id(tokenizer, EOS))


class PromptBuilder:
    """Builds ``Example``s of every task from batch rows (``history [B, H]`` item ids, left-padded,
    ``history_mask``, ``target [B]``); histories keep their last ``history_items`` items."""

    def __init__(self, tables: PromptTables, history_items: int, num_candidates: int, num_items: int):
        self.t, self.history_items = tables, history_items
        self.num_candidates, self.num_items = num_candidates, num_items

    def _constant(self, tokens: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        return jnp.broadcast_to(tokens, (batch, len(tokens))), jnp.ones((batch, len(tokens)), bool)

    def _codes_of(self, items: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Code tokens ``[B, n * L]`` of items ``[B, n]`` (all valid)."""
        tokens = self.t.item_codes[items]
        flat = tokens.reshape(items.shape[0], -1)
        return flat, jnp.ones(flat.shape, bool)

    def _history(self, history: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        history, mask = history[:, -self.history_items:], mask[:, -self.history_items:]
        tokens, _ = self._codes_of(history)
        return tokens, jnp.repeat(mask, self.t.item_codes.shape[1], axis=1)

    def _prompt(self, segments) -> tuple[jax.Array, jax.Array]:
        tokens = jnp.concatenate([s[0] for s in segments], 1)
        valid = jnp.concatenate([s[1] for s in segments], 1)
        return left_pack(tokens, valid, self.t.pad)

    def _code_response(self, items: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = self.t.item_codes[items]
        eos = jnp.full((len(items), 1), self.t.eos, jnp.int32)
        return jnp.concatenate([codes, eos], 1), jnp.ones((len(items), codes.shape[1] + 1), bool)

    def _title_response(self, items: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Title then ``</s>`` right after its last token, right-padded."""
        ids, mask = self.t.titles[items], self.t.title_mask[items]
        ids = jnp.concatenate([ids, jnp.full((len(items), 1), self.t.pad, jnp.int32)], 1)
        mask = jnp.concatenate([mask, jnp.zeros((len(items), 1), bool)], 1)
        end = mask.sum(1)
        at_end = jnp.arange(ids.shape[1])[None] == end[:, None]
        return jnp.where(at_end, self.t.eos, ids), mask | at_end

    def _framed(self, task: str, middle: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """The prompt ``before + middle + after`` of a task with a two-part template."""
        before, after = self.t.templates[task]
        n = len(middle[0])
        return self._prompt([self._constant(before, n), middle, self._constant(after, n)])

    def seq(self, batch: dict, rng: jax.Array) -> Example:
        del rng
        prompt = self._framed("seq", self._history(batch["history"], batch["history_mask"]))
        return Example(*prompt, *self._code_response(batch["target"]))

    def item2code(self, batch: dict, rng: jax.Array) -> Example:
        del rng
        target = batch["target"]
        prompt = self._framed("item2code", (self.t.titles[target], self.t.title_mask[target]))
        return Example(*prompt, *self._code_response(target))

    def code2item(self, batch: dict, rng: jax.Array) -> Example:
        del rng
        target = batch["target"]
        return Example(*self._framed("code2item", self._codes_of(target[:, None])), *self._title_response(target))

    def query(self, batch: dict, rng: jax.Array) -> Example:
        del rng
        target = batch["target"]
        prompt = self._framed("query", (self.t.queries[target], self.t.query_mask[target]))
        return Example(*prompt, *self._code_response(target))

    def candidates(self, target: jax.Array, rng: jax.Array) -> jax.Array:
        """``[B, C]`` items: the target and ``C - 1`` distinct uniform negatives, shuffled (top-k of
        uniform noise over the catalogue, ``O(B N)``: fine for a training task's share of a batch)."""
        n, c = len(target), self.num_candidates
        draw_key, order_key = jax.random.split(rng)
        noise = jax.random.uniform(draw_key, (n, self.num_items))
        noise = noise.at[jnp.arange(n), target].set(-1.0)  # never the target
        negatives = jax.lax.top_k(noise, c - 1)[1]
        items = jnp.concatenate([target[:, None], negatives], 1)
        order = jnp.argsort(jax.random.uniform(order_key, (n, c)), axis=1)
        return jnp.take_along_axis(items, order, 1)

    def negative(self, batch: dict, rng: jax.Array) -> Example:
        target, n = batch["target"], len(batch["target"])
        before, middle, after = self.t.templates["negative"]
        prompt = self._prompt([self._constant(before, n), self._history(batch["history"], batch["history_mask"]),
                               self._constant(middle, n), self._codes_of(self.candidates(target, rng)),
                               self._constant(after, n)])
        return Example(*prompt, *self._code_response(target))

    def build(self, task: str, batch: dict, rng: jax.Array) -> Example:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return getattr(self, task)(batch, rng)


def task_rows(weights: dict[str, float], batch_size: int) -> dict[str, int]:
    """Rows of a ``batch_size`` batch given to each task with a positive weight, in proportion to
    the weights (largest remainders); every such task gets at least one row."""
    active = {t: w for t, w in weights.items() if w > 0}
    if not active:
        raise ValueError("every task weight is 0; give model.tasks at least one positive weight")
    if batch_size < len(active):
        raise ValueError(f"batch of {batch_size} rows is smaller than the {len(active)} active tasks")
    total = sum(active.values())
    exact = {t: batch_size * w / total for t, w in active.items()}
    rows = {t: max(1, int(v)) for t, v in exact.items()}
    by_remainder = sorted(active, key=lambda t: exact[t] - int(exact[t]), reverse=True)
    i = 0
    while sum(rows.values()) < batch_size:
        rows[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(rows.values()) > batch_size:
        largest = max(rows, key=rows.get)
        rows[largest] -= 1
    return rows
