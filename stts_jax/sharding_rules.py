"""The mesh axes and the one table that maps logical axis names to them (read by the sharding of
parameters and batches, and by the attention kernels that run per shard)."""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (in order); None = replicated
LOGICAL_RULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("vocab", ("tensor",)),
    ("layers", None),
    ("norm", None),
)
