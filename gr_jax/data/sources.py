"""Reads the configured raw source into a validated canonical ``Dataset``."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import ml_collections

from gr_jax.data import amazon, lcrec, synthetic
from gr_jax.data.dataset import Dataset, positive_events, validate
from gr_jax.data.errors import DataError

FORMATS = ("synthetic", "lcrec", "amazon")


def synthetic_config(data: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    """The generator config from ``data.synthetic`` (every generator knob is a config field)."""
    return synthetic.SyntheticConfig(**data.synthetic.to_dict())


def read_source(data: ml_collections.ConfigDict) -> Dataset:
    """Reads ``data.format`` from ``data.dir``, keeps only positive events if asked and validates it
    (counts of anything dropped in ``report``)."""
    dataset, source = _read(data)
    if data.positives_only:
        keep = positive_events(dataset.users.actions, len(dataset.users.items))
        dataset.report["events_dropped_not_positive"] = int((~keep).sum())
        if not keep.all():
            logging.info("data.positives_only: dropping %d of %d events without a positive action.",
                         int((~keep).sum()), len(keep))
        dataset = dataclasses.replace(dataset, users=dataset.users.select_events(keep))
    return validate(dataset, data.min_user_events, source=source, targets=data.targets)


def _read(data: ml_collections.ConfigDict) -> tuple[Dataset, str]:
    if data.format == "synthetic":
        return synthetic.generate(synthetic_config(data))[0], "synthetic data"
    if not data.dir:
        raise DataError(f"data.format={data.format!r} needs --config.data.dir=DIR pointing at the raw files")
    if not os.path.isdir(data.dir):
        raise DataError(f"data.dir={data.dir!r} is not a directory; pass --config.data.dir=DIR with the raw files")
    if data.format == "lcrec":
        found = [] if data.name else lcrec.lcrec_names(data.dir)
        name = data.name or (found[0] if len(found) == 1 else None)
        if len(found) > 1:
            raise DataError(f"{data.dir} holds several LC-Rec datasets ({', '.join(found)}); "
                            f"choose one with --config.data.name=NAME")
        if not name:
            present = sorted(os.listdir(data.dir))[:20]
            raise DataError(f"no NAME.inter.json + NAME.item.json pair found in {data.dir} (found: {present}); "
                            f"set --config.data.name=NAME or point data.dir at an LC-Rec dataset folder")
        dataset = lcrec.read_lcrec(data.dir, name, drop_unknown_items=data.drop_unknown_items)
        return dataset, os.path.join(data.dir, name + ".inter.json")
    if data.format == "amazon":
        if not data.name:
            raise DataError("data.format='amazon' needs --config.data.name=CATEGORY "
                            "(e.g. Industrial_and_Scientific, the prefix of the review/meta files)")
        reviews, meta = amazon.find_amazon_files(data.dir, data.name)
        dataset = amazon.read_amazon2018(reviews, meta, data.name, min_core=data.min_core)
        actions = amazon.rating_actions(dataset.users.ratings, data.positive_rating, data.negative_rating)
        return dataclasses.replace(dataset, users=dataclasses.replace(dataset.users, actions=actions)), reviews
    raise DataError(f"data.format={data.format!r} is not one of {FORMATS}")


def source_fingerprint(data: ml_collections.ConfigDict) -> dict:
    """The config fields that determine the dataset content (for artifact keys)."""
    keys = ["format", "min_user_events"]
    keys += {"synthetic": ["synthetic"], "lcrec": ["dir", "name", "drop_unknown_items"],
             "amazon": ["dir", "name", "min_core", "positive_rating", "negative_rating"]}.get(data.format, [])
    keys += [k for k, default in (("positives_only", False), ("targets", "all")) if data[k] != default]
    out = {k: data[k].to_dict() if isinstance(data[k], ml_collections.ConfigDict) else data[k] for k in keys}
    if "dir" in out:
        out["dir"] = os.path.abspath(out["dir"])
        if os.path.isdir(out["dir"]):  # changed raw files make a new dataset, not a stale reuse
            paths = {name: os.path.join(out["dir"], name) for name in sorted(os.listdir(out["dir"]))}
            out["files"] = {name: file_digest(path) for name, path in paths.items() if os.path.isfile(path)}
    return out


def file_digest(path: str, edge_bytes: int = 1 << 20) -> list:
    """``[size, sha256 of the first and last edge_bytes]`` of a raw file: content, not modification
    time, keys its dataset, so a copied or touched source reuses what was built from it, while a
    grown, shrunk or rewritten one (barring a same-size edit confined to its middle) builds anew."""
    size, digest = os.path.getsize(path), hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(edge_bytes))
        if size > edge_bytes:
            f.seek(max(size - edge_bytes, edge_bytes))
            digest.update(f.read())
    return [size, digest.hexdigest()[:16]]


