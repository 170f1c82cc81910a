"""Items as text, and their (cached) MiniLM embeddings.

A *template* is a sequence of parts joined with ``"; "``, given either as a tuple of part
strings or as one string whose parts are separated by ``"; "``. A part is ``str.format``
text over the fields ``{title}``, ``{brand}``, ``{categories}`` (the category path joined with
``" > "``) and ``{description}``. A part whose fields are all empty is dropped, so a missing
brand gives no dangling ``"Brand: "``::

    "Title: {title}; Brand: {brand}; Categories: {categories}; Description: {description}"
    -> "Title: Pipette tips; Categories: Lab > Consumables"        (no brand, no description)

Field values are HTML-unescaped, stripped of HTML tags and whitespace-collapsed.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import string
from collections.abc import Sequence

import numpy as np

from gr_jax.data.dataset import ItemTable

FIELDS = ("title", "brand", "categories", "description")
PART_SEPARATOR = "; "
CATEGORY_SEPARATOR = " > "
DEFAULT_TEMPLATE = "Title: {title}; Brand: {brand}; Categories: {categories}; Description: {description}"

Template = str | Sequence[str]

_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACE = re.compile(r"\s+")


def clean_field(value: str) -> str:
    """HTML entities unescaped (also double-escaped ones), tags removed, whitespace collapsed."""
    text = str(value or "")
    for _ in range(3):  # "&amp;quot;" -> "&quot;" -> '"'
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return _SPACE.sub(" ", _TAG.sub(" ", text)).strip()


def parse_template(template: Template) -> list[tuple[str, tuple[str, ...]]]:
    """``[(part, fields_used)]``; raises ``ValueError`` for unknown fields or an empty template."""
    parts = template.split(PART_SEPARATOR) if isinstance(template, str) else list(template)
    parsed = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"template parts must be strings, got {part!r}")
        if not part.strip():
            continue
        try:
            names = tuple(name for _, name, _, _ in string.Formatter().parse(part) if name is not None)
        except ValueError as e:
            raise ValueError(f"template part {part!r} is not valid format text: {e}") from None
        unknown = [n for n in names if n not in FIELDS]
        if unknown:
            raise ValueError(f"template part {part!r} uses unknown field(s) {unknown}; "
                             f"allowed: {', '.join('{' + f + '}' for f in FIELDS)}")
        parsed.append((part.strip(), names))
    if not parsed:
        raise ValueError(f"template {template!r} has no parts")
    return parsed


def render(fields: dict[str, str], template: Template = DEFAULT_TEMPLATE) -> str:
    """One item's text from already-cleaned ``fields``; parts whose fields are all empty are dropped."""
    return _render(fields, parse_template(template))


def _render(fields: dict[str, str], parsed: list[tuple[str, tuple[str, ...]]]) -> str:
    out = []
    for part, names in parsed:
        if names and not any(fields[n] for n in names):
            continue
        text = _SPACE.sub(" ", part.format(**{n: fields[n] for n in names})).strip()
        if text:
            out.append(text)
    return PART_SEPARATOR.join(out)


def item_text(items: ItemTable, template: Template = DEFAULT_TEMPLATE) -> list[str]:
    """The text of every item (index = internal item id)."""
    parsed = parse_template(template)
    texts = []
    for i in range(len(items)):
        fields = {
            "title": clean_field(items.title[i]),
            "brand": clean_field(items.brand[i]),
            "categories": CATEGORY_SEPARATOR.join(
                c for c in (clean_field(c) for c in items.categories[i]) if c),
            "description": clean_field(items.description[i]),
        }
        texts.append(_render(fields, parsed))
    return texts


def cache_key(texts: Sequence[str], model_id: str, max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model_id, "max_length": int(max_length)}).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:24]


def embed_items(items: ItemTable, encoder=None, cache_dir: str | None = None,
                template: Template = DEFAULT_TEMPLATE, max_length: int = 128) -> np.ndarray:
    """MiniLM embeddings of :func:`item_text`, float32 ``[num_items, dim]``, cached in ``cache_dir``.

    ``encoder`` is a :class:`~gr_jax.text.minilm.TextEncoder` (anything with ``encode``,
    ``model_id`` and ``max_length``), or None to load the packaged weights only on a cache miss.
    The cache file ``item_text_<hash>.npy`` is keyed by the texts, the weights file (name and
    size) and ``max_length``.
    """
    from gr_jax.text import minilm

    if encoder is not None and getattr(encoder, "max_length", max_length) != max_length:
        raise ValueError(f"embed_items(max_length={max_length}) but the encoder truncates to "
                         f"{encoder.max_length} tokens; pass the same value")
    texts = item_text(items, template)
    path = None
    if cache_dir:
        model_id = encoder.model_id if encoder is not None else minilm.model_id(minilm.find_model_dir())
        path = os.path.join(cache_dir, f"item_text_{cache_key(texts, model_id, max_length)}.npy")
        if os.path.isfile(path):
            try:
                cached = np.load(path)
            except (OSError, ValueError) as e:
                logging.warning("Item-text embedding cache %s is unreadable (%s); recomputing", path, e)
            else:
                if cached.ndim == 2 and cached.shape[0] == len(texts):
                    logging.info("Item-text embedding cache hit: %s (%d items)", path, len(texts))
                    return cached.astype(np.float32, copy=False)
                logging.warning("Item-text embedding cache %s has shape %s, expected %d rows; recomputing",
                                path, cached.shape, len(texts))
        logging.info("Item-text embedding cache miss: %s (%d items)", path, len(texts))
    if encoder is None:
        encoder = minilm.TextEncoder.from_pretrained(max_length=max_length)
    embeddings = np.asarray(encoder.encode(texts), np.float32)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}.npy"
        np.save(tmp, embeddings)
        os.replace(tmp, path)
    return embeddings
