"""Reads the configured raw source into a validated canonical ``Dataset``."""

from __future__ import annotations

import os

import ml_collections

from gr_jax.data import amazon, lcrec, synthetic
from gr_jax.data.dataset import Dataset, validate
from gr_jax.data.errors import DataError

FORMATS = ("synthetic", "lcrec", "amazon")


def synthetic_config(data: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    """The generator config from ``data.synthetic`` (every generator knob is a config field)."""
    return synthetic.SyntheticConfig(**data.synthetic.to_dict())


def read_source(data: ml_collections.ConfigDict) -> Dataset:
    """Reads ``data.format`` from ``data.dir`` and validates it (counts of anything dropped in ``report``)."""
    if data.format == "synthetic":
        dataset, _ = synthetic.generate(synthetic_config(data))
        return validate(dataset, data.min_user_events, source="synthetic data")
    if not data.dir:
        raise DataError(f"data.format={data.format!r} needs --config.data.dir=DIR pointing at the raw files")
    if not os.path.isdir(data.dir):
        raise DataError(f"data.dir={data.dir!r} is not a directory; pass --config.data.dir=DIR with the raw files")
    if data.format == "lcrec":
        name = data.name or lcrec.find_lcrec_name(data.dir)
        if not name:
            present = sorted(os.listdir(data.dir))[:20]
            raise DataError(f"no NAME.inter.json + NAME.item.json pair found in {data.dir} (found: {present}); "
                            f"set --config.data.name=NAME or point data.dir at an LC-Rec dataset folder")
        dataset = lcrec.read_lcrec(data.dir, name, drop_unknown_items=data.drop_unknown_items)
        return validate(dataset, data.min_user_events, source=os.path.join(data.dir, name + ".inter.json"))
    if data.format == "amazon":
        if not data.name:
            raise DataError("data.format='amazon' needs --config.data.name=CATEGORY "
                            "(e.g. Industrial_and_Scientific, the prefix of the review/meta files)")
        reviews, meta = amazon.find_amazon_files(data.dir, data.name)
        dataset = amazon.read_amazon2018(reviews, meta, data.name, min_core=data.min_core)
        return validate(dataset, data.min_user_events, source=reviews)
    raise DataError(f"data.format={data.format!r} is not one of {FORMATS}")


def source_fingerprint(data: ml_collections.ConfigDict) -> dict:
    """The config fields that determine the dataset content (for artifact keys)."""
    keys = ["format", "min_user_events"]
    keys += {"synthetic": ["synthetic"], "lcrec": ["dir", "name", "drop_unknown_items"],
             "amazon": ["dir", "name", "min_core"]}.get(data.format, [])
    out = {k: data[k].to_dict() if isinstance(data[k], ml_collections.ConfigDict) else data[k] for k in keys}
    if "dir" in out:
        out["dir"] = os.path.abspath(out["dir"])
        if os.path.isdir(out["dir"]):  # changed raw files make a new dataset, not a stale reuse
            out["files"] = {name: [(st := os.stat(os.path.join(out["dir"], name))).st_size, int(st.st_mtime)]
                            for name in sorted(os.listdir(out["dir"]))
                            if os.path.isfile(os.path.join(out["dir"], name))}
    return out


