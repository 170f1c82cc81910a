"""Device mesh and logical-axis sharding rules.

Parameters and large activations carry logical axis names (``batch``, ``seq``, ``embed``,
``mlp``, ``heads``, ``kv``, ``vocab``, ...); one rules table from the config maps them
onto the mesh axes ``data`` and ``model``. The same code runs on one CPU device, a
simulated 8-device mesh, a GPU host or a TPU pod.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")


def make_mesh(mesh: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all); ``mesh.data = -1`` takes every device
    that ``mesh.model`` leaves, explicit sizes use the first ``data * model`` devices."""
    devices = jax.devices() if devices is None else list(devices)
    model = mesh.model
    data = mesh.data if mesh.data > 0 else len(devices) // model
    if data < 1 or model < 1 or data * model > len(devices):
        raise ValueError(f"mesh.data={mesh.data} x mesh.model={mesh.model} does not fit the "
                         f"{len(devices)} available devices")
    try:
        return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                             devices=devices[:data * model])
    except NotImplementedError:  # a TPU torus whose axes do not factor into (data, model): split one
        grid = mesh_utils.create_device_mesh((data, model), devices[:data * model], allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, str | None], ...]:
    return tuple((name, axis or None) for name, axis in config.sharding.rules)


def state_shardings(abstract_boxed_state, mesh: Mesh, rules):
    """NamedShardings of a state whose params were initialised with logical partitioning boxes."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_boxed_state), mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def to_host_local(array: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a global array split along ``data`` (the inverse of ``shard_batch``)."""
    local = multihost_utils.global_array_to_host_local_array(array, mesh, PartitionSpec("data"))
    return np.asarray(local)


def to_host(tree):
    """Every leaf of ``tree`` as a whole NumPy array on every process (a leaf sharded over
    processes is gathered; collective, so every process calls it)."""
    def fetch(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global arrays split along ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
