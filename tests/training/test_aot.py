"""Ahead-of-time compilation of TIGER's :tiny train step for a small TPU topology (needs the
``libtpu`` wheel, the ``tpu`` extra; skipped without it)."""

import os

import jax
import pytest

from configs import tiger
from gr_jax import stages

pytest.importorskip("libtpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # as gr_jax.aot: descriptions only, no TPU in use

from gr_jax.aot import compile_for_topology  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot")
    config = tiger.get_config("tiny")
    config.stages = "data,features,tokenize"
    stages.run(config, str(path))
    return str(path)


@pytest.mark.parametrize("model_axis", [1, 2])
def test_tiny_step_compiles_for_v5e_2x2_with_the_configs_sharding(workdir, model_axis):
    config = tiger.get_config("tiny")
    config.mesh.model = model_axis
    report, state = compile_for_topology(config, workdir, "v5e:2x2")
    assert report["device_kind"] == "TPU v5 lite" and report["mesh"] == {"data": 4 // model_axis, "model": model_axis}
    assert report["gflops_per_step_per_device"] > 0 and report["roofline_step_ms"] > 0
    assert 0 < report["peak_gib"] < report["hbm_gib"]
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    split = {jax.tree_util.keystr(path): (leaf.shape, leaf.sharding.shard_shape(leaf.shape))
             for path, leaf in leaves if leaf.sharding.shard_shape(leaf.shape) != leaf.shape}
    if model_axis == 1:
        assert not split  # data parallel: every device holds every parameter
    else:  # 'mlp', 'heads' and 'vocab' are split over the model axis: half of that dimension per device
        assert split and all(any(s == f // 2 for f, s in zip(full, shard)) for full, shard in split.values())
        assert any("mlp" in name.lower() or "wi" in name for name in split), list(split)[:5]
