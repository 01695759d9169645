"""Device mesh and shardings.

The mesh comes from `config.mesh`, an ordered mapping of axis name -> size where one size may
be -1 ("all remaining devices"). Axes: `data` (pure data parallel), `fsdp` (data parallel AND
parameters / optimizer state split over it), `model` (tensor parallel, by explicit rules).
The batch is split over `data` x `fsdp`.

Parameter and optimizer-state shardings come from `config.sharding.rules`: an ordered list of
(regex, spec) pairs; the first regex found (re.search) in a leaf's '/'-joined path decides:
  'replicate'            every device holds the whole tensor;
  'fsdp'                 the largest dimension divisible by the `fsdp` axis size is split over
                         it, for tensors of at least `config.sharding.fsdp_min_size` elements;
  (axis or None, ...)    explicit per-dimension mesh axes (a dimension that the axis size does
                         not divide, or an axis the mesh lacks, stays whole).
Optimizer-state leaves (Adam's mu / nu) end with their parameter's path, so one rule covers
both. A leaf no rule matches is replicated.
"""
import contextlib
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Axes over which the batch is split.
BATCH_AXES: Sequence[str] = ("data", "fsdp")
MESH_AXES: Sequence[str] = ("data", "fsdp", "model")

# Megatron-style tensor parallelism over `model` for the MLP and attention (a no-op when the
# mesh has no `model` axis or it has size 1), FSDP for everything else that is large.
DEFAULT_RULES = (
    (r"mlp/Dense_0/kernel$", ("fsdp", "model")),          # [width, mlp_dim]
    (r"mlp/Dense_0/bias$", ("model",)),
    (r"mlp/Dense_1/kernel$", ("model", "fsdp")),          # [mlp_dim, width]
    (r"attn/(query|key|value)/kernel$", ("fsdp", "model", None)),  # [width, heads, head_dim]
    (r"attn/(query|key|value)/bias$", ("model", None)),
    (r"attn/out/kernel$", ("model", None, "fsdp")),       # [heads, head_dim, width]
    (r".*", "fsdp"),
)


def resolve_mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict:
    """Fills in a single -1 axis size; checks that the sizes multiply to the device count."""
    sizes = dict(axes)
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    if unknown:
        if num_devices % known:
            raise ValueError(f"config.mesh={sizes}: {num_devices} devices are not divisible by {known}")
        sizes[unknown[0]] = num_devices // known
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ValueError(f"config.mesh={sizes} needs {int(np.prod(list(sizes.values())))} devices, "
                         f"but {num_devices} are present")
    return sizes


def make_mesh(axes: Mapping[str, int], devices=None) -> Mesh:
    """A mesh over all devices (or `devices`) with the named axes of `config.mesh`."""
    devices = jax.devices() if devices is None else devices
    sizes = resolve_mesh_shape(axes, len(devices))
    dev = np.asarray(devices).reshape(tuple(sizes.values()))
    return Mesh(dev, tuple(sizes.keys()))


def batch_axes(mesh: Mesh) -> tuple:
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def path_str(path) -> str:
    """A pytree key path as 'a/b/0/c' (dict keys, attribute names and indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str, min_size: int) -> P:
    n = mesh.shape.get(axis, 1)
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])  # largest first
    for d in dims:
        if shape[d] % n == 0:
            spec = [None] * len(shape)
            spec[d] = axis
            return P(*spec)
    return P()


def _explicit_spec(shape: Sequence[int], mesh: Mesh, spec: Sequence) -> P:
    if len(shape) == len(spec) + 1:  # stacked by nn.scan: [depth, ...]
        spec = (None,) + tuple(spec)
    if len(spec) != len(shape):  # e.g. a rule written for a kernel meeting a scalar count
        return P()
    out = []
    for size, axis in zip(shape, spec):
        ok = axis is not None and axis in mesh.shape and size % mesh.shape[axis] == 0
        out.append(axis if ok and mesh.shape[axis] > 1 else None)
    return P(*out)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence,
             fsdp_axis: str = "fsdp", fsdp_min_size: int = 2 ** 16) -> P:
    """The PartitionSpec the first matching rule gives a leaf of `shape` at `path`."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            if spec == "replicate":
                return P()
            if spec == "fsdp":
                return _fsdp_spec(shape, mesh, fsdp_axis, fsdp_min_size)
            return _explicit_spec(shape, mesh, tuple(spec))
    return P()


def state_shardings(shapes: Any, mesh: Mesh, cfg=None) -> Any:
    """NamedShardings for a pytree of ShapeDtypeStructs (params, optimizer state, ...) from
    `config.sharding` (`cfg`; None: DEFAULT_RULES)."""
    cfg = cfg or {}
    rules = cfg.get("rules") or DEFAULT_RULES
    fsdp_axis, min_size = cfg.get("fsdp_axis", "fsdp"), cfg.get("fsdp_min_size", 2 ** 16)

    def one(path, leaf):
        return NamedSharding(mesh, spec_for(path_str(path), leaf.shape, mesh, rules,
                                            fsdp_axis, min_size))
    return jax.tree_util.tree_map_with_path(one, shapes)


def bytes_per_device(shapes: Any, shardings: Any) -> int:
    """Bytes one device holds of a sharded pytree (from the shapes and shardings)."""
    total = 0
    for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        shard = sh.shard_shape(s.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(s.dtype).itemsize
    return total


def logical_rules(mesh: Mesh) -> tuple:
    """Flax logical-axis rules: activations' 'batch' dimension over the data-parallel axes."""
    return (("batch", batch_axes(mesh) or None),)


@contextlib.contextmanager
def activation_context(mesh: Mesh):
    """While tracing under this context, `nn.with_logical_constraint(x, ('batch', ...))` in the
    models pins activations' batch dimension to the data-parallel axes (otherwise XLA may
    follow the FSDP parameter shardings and gather activations instead of weights)."""
    import flax.linen as nn
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
            nn.logical_axis_rules(logical_rules(mesh)):
        yield


def constrain_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Leading dimension over the data-parallel axes, the rest replicated."""
    spec = P(batch_axes(mesh), *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
