"""The mesh ('data', 'fsdp', 'tensor'), logical axis names for every parameter, and the one rules table.

Parameters get logical axes from their path and role (`param_logical_axes`); `LOGICAL_RULES` maps
logical axes to mesh axes. A mesh axis that does not divide a dimension is dropped for that
parameter (it is replicated along it) rather than failing, so small models run on any mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from stts_jax.errors import ConfigError
from stts_jax.sharding_rules import LOGICAL_RULES, MESH_AXES
from stts_jax.train.optimizer import param_path

# (path regex, logical axes of the unstacked parameter); first match wins
_PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r".*/(q|k|v)/kernel", ("embed", "heads")),
    (r".*/(q|k|v)/bias", ("heads",)),
    (r".*/o/kernel", ("heads", "embed")),
    (r".*/(gate|up|fc1)/kernel", ("embed", "mlp")),
    (r".*/(gate|up|fc1)/bias", ("mlp",)),
    (r".*/(down|fc2)/kernel", ("mlp", "embed")),
    (r".*/fc3/kernel", ("mlp", None)),
    (r"text/embed/embedding", ("vocab", "embed")),
    (r"lm_head/kernel", ("embed", "vocab")),
    (r"vit/patch_embedding/kernel", (None, "embed")),
    (r"vit/positional_embedding", (None, "embed")),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data, self.fsdp, self.tensor


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    if math.prod(cfg.shape) != len(devices):
        raise ConfigError(
            f"mesh data x fsdp x tensor = {' x '.join(map(str, cfg.shape))} = {math.prod(cfg.shape)} does not match "
            f"the {len(devices)} devices; choose axis sizes whose product is {len(devices)}."
        )
    return jax.make_mesh(cfg.shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_axes(path, leaf) -> tuple[str | None, ...]:
    """Logical axes of one parameter; stacked blocks get a leading "layers" axis."""
    name = param_path(path)
    stacked = "/blocks/" in f"/{name}/"
    rank = leaf.ndim - int(stacked)
    found = next((a for pattern, a in _PARAM_RULES if re.fullmatch(pattern, name)), None)
    logical = found if found is not None and len(found) == rank else ("norm",) * rank
    return (("layers",) if stacked else ()) + tuple(logical)


def spec_for(shape: tuple[int, ...], logical: tuple[str | None, ...], mesh: Mesh) -> PartitionSpec:
    rules = dict(LOGICAL_RULES)
    spec, used = [], set()
    for size, name in zip(shape, logical, strict=True):
        mesh_axes = [a for a in (rules.get(name) or ()) if a not in used and mesh.shape[a] > 1]
        while mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes):
            mesh_axes.pop()  # does not divide: shard over fewer axes
        used.update(mesh_axes)
        spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return PartitionSpec(*spec)


def param_shardings(params, mesh: Mesh):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(leaf.shape, logical_axes(path, leaf), mesh)), params
    )


def state_shardings(state_shape, mesh: Mesh):
    """Shardings of a TrainState shape: params by rule, optimizer moments like their params, rest replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = param_shardings(state_shape.params, mesh)
    by_path = {
        param_path(p): (leaf.shape, sh)
        for (p, leaf), sh in zip(
            jax.tree_util.tree_flatten_with_path(state_shape.params)[0], jax.tree.leaves(params), strict=True
        )
    }

    def like_its_param(path, leaf):
        # optimizer moments mirror the params tree: the trailing dict keys of their path name the param
        keys = []
        for key in reversed(path):
            if not isinstance(key, jax.tree_util.DictKey):
                break
            keys.insert(0, key)
        shape, sharding = by_path.get(param_path(keys), (None, replicated))
        return sharding if shape == leaf.shape else replicated

    opt = jax.tree_util.tree_map_with_path(like_its_param, state_shape.opt_state)
    return state_shape.replace(step=replicated, params=params, opt_state=opt, rng=replicated)


def batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """Rows over ('data', 'fsdp'); the batch must divide them."""
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % rows:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the data x fsdp axes ({rows}); use a multiple of {rows}."
        )
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
