"""Device mesh and shardings.

The mesh comes from `config.mesh`, an ordered mapping of axis name -> size where one size may
be -1 ("all remaining devices"). The batch is split over every data-parallel axis; parameters
are replicated (FSDP rules come with the scale-out work).
"""
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Axes over which the batch is split.
BATCH_AXES: Sequence[str] = ("data", "fsdp")


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
