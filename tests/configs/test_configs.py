"""System configs: every variant loads without JAX, holds only its own tokenizer, and is checked
when loaded (string choices with their valid values, missing stage inputs)."""

import importlib
import subprocess
import sys

import pytest

from configs import crbr, pctx, prism, rqkmeans, tiger
from gr_jax import config_schema, stages
from gr_jax.models import registry

SYSTEMS = {"popularity": ("tiny", "scientific"), "cooccurrence": ("tiny", "scientific"),
           "sasrec": ("tiny", "scientific"), "duorec": ("tiny", "scientific"),
           "tiger": ("tiny", "scientific", "scientific_full"), "prism": ("tiny", "scientific", "scientific_full"),
           "pctx": ("tiny", "scientific", "scientific_full"), "qformer": ("tiny", "scientific"),
           "two_tower": ("tiny", "scientific"), "crbr": ("tiny", "scientific"), "latent": ("tiny", "scientific"),
           "gat": ("tiny", "scientific", "stage2"), "dccf": ("tiny", "scientific"), "lightgcn": ("tiny", "scientific"),
           "rqvae": ("tiny", "scientific"), "rqkmeans": ("tiny", "scientific"), "semconv": ("tiny", "scientific")}


def test_every_variant_loads_and_validates_without_importing_jax():
    code = ("import importlib, sys\n"
            f"for name, variants in {SYSTEMS!r}.items():\n"
            "    for arg in (None,) + variants:\n"
            "        importlib.import_module(f'configs.{name}').get_config(arg)\n"
            "import gr_jax.config_schema\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'matplotlib'))\n"
            "print(loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for name, variants in SYSTEMS.items():
        for arg in (None,) + variants:
            config_schema.validate(importlib.import_module(f"configs.{name}").get_config(arg))
        with pytest.raises(ValueError, match="unknown config variant 'nope'"):
            importlib.import_module(f"configs.{name}").get_config("nope")


def test_a_system_config_carries_only_its_own_tokenizer():
    assert [k for k in ("rq_vae", "rq_kmeans", "prism", "pctx") if k in tiger.get_config().tokenizer] == ["rq_vae"]
    assert [k for k in ("rq_vae", "rq_kmeans", "prism", "pctx") if k in prism.get_config().tokenizer] == ["prism"]
    assert [k for k in ("rq_vae", "rq_kmeans", "prism", "pctx") if k in pctx.get_config().tokenizer] == ["pctx"]
    config = tiger.get_config("tiny")
    config.tokenizer.name = "rq_kmeans"
    with pytest.raises(config_schema.ConfigError, match="index_json"):
        config_schema.validate(config)
    config.tokenizer.name = "index_json"  # every SID system can train on imported SIDs
    config_schema.validate(config)


def test_tiger_prism_and_pctx_compare_at_equal_budget():
    for variant in ("scientific", "scientific_full"):
        budgets = [m.get_config(variant).train.to_dict() for m in (tiger, prism, pctx)]
        assert budgets[0] == budgets[1] == budgets[2]
        assert len({m.get_config(variant).model.item_level_history for m in (tiger, prism, pctx)}) == 1


@pytest.mark.parametrize("path, value, valid", [
    ("model.dsi_fusion", "mix", "moe, gate"),
    ("train.schedule", "step", "cosine, linear, constant"),
    ("features.cf.model.loss", "hinge", "ce, sampled_softmax, bce"),
    ("tokenizer.prism.recon_loss", "l1", "mse, cosine"),
    ("model.dropout_impl", "philox", "hash, threefry"),
])
def test_a_bad_choice_fails_when_the_config_is_loaded_naming_the_valid_values(path, value, valid):
    config = prism.get_config("tiny")
    section, field = path.rsplit(".", 1)
    target = config
    for part in section.split("."):
        target = target[part]
    target[field] = value
    with pytest.raises(config_schema.ConfigError, match=f"{path}='{value}'; expected one of {valid}"):
        stages.run(config, "unused-workdir")


def test_the_registry_builds_every_model_name_the_schema_accepts():
    assert tuple(registry.MODELS) == config_schema.MODEL_NAMES
    assert crbr.get_config().model.name in registry.MODELS


def test_a_missing_input_stops_the_run_before_any_stage_naming_the_stage_that_makes_it(tmp_path):
    config = tiger.get_config("tiny")
    config.stages = "data,train"
    with pytest.raises(stages.MissingArtifactError, match="add 'tokenize' to config.stages"):
        stages.run(config, str(tmp_path))
    assert not (tmp_path / "data").exists()  # nothing ran
    config = rqkmeans.get_config("tiny")
    config.stages = "tokenize"
    with pytest.raises(stages.MissingArtifactError, match="add 'data' to config.stages"):
        stages.run(config, str(tmp_path))
