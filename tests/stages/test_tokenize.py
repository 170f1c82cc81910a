"""The tokenize stage end to end on the tiny synthetic catalogue: artifacts, import, health failures."""

import json
import os

import numpy as np
import pytest

from configs import rqkmeans, rqvae
from gr_jax import stages
from gr_jax.tokenizers.health import CodebookHealthError
from gr_jax.tokenizers.sid_table import SIDTable


@pytest.mark.parametrize("make_config", [rqvae.get_config, rqkmeans.get_config])
def test_tiny_tokenize_writes_a_collision_free_sid_table_and_health_report(tmp_path, make_config):
    stages.run(make_config("tiny"), str(tmp_path))
    out = tmp_path / "tokenize"
    for name in ("sid_table.npz", "index.json", "health.json", "health.png", "summary.json"):
        assert (out / name).exists(), name
    table = SIDTable.load(str(out))
    assert table.codes.shape == (100, 4) and table.num_unique == 100  # 3 levels + de-dup digit
    summary = json.load(open(out / "summary.json"))
    assert summary["collision_rate_after"] == 0.0


def test_index_json_import_trains_on_foreign_sids(tmp_path):
    config = rqkmeans.get_config("tiny")
    stages.run(config, str(tmp_path / "a"))
    config = rqkmeans.get_config("tiny")
    config.features.text.enabled = False
    config.tokenizer.name = "index_json"
    config.tokenizer.index_json = str(tmp_path / "a" / "tokenize" / "index.json")
    artifacts = stages.run(config, str(tmp_path / "b"))
    np.testing.assert_array_equal(artifacts.sid_table.codes, SIDTable.load(str(tmp_path / "a" / "tokenize")).codes)


def test_unhealthy_codebooks_stop_the_stage_with_the_fix(tmp_path):
    config = rqkmeans.get_config("tiny")
    config.tokenizer.rq_kmeans.codebook_size = 64  # 100 items cannot use 90% of 64 codes at level 3
    config.tokenizer.health.min_usage = 0.9
    with pytest.raises(CodebookHealthError, match="usage"):
        stages.run(config, str(tmp_path))
    assert os.path.exists(tmp_path / "tokenize" / "health.json")  # the report is kept for inspection
