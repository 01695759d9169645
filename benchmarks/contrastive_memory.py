r"""Per-device temporary memory of the contrastive loss (value and gradients) as the number of
devices grows at a fixed per-device batch: the global B x B version vs the shard_map 'local'
version (maeclip_jax.losses.contrastive_loss_sharded). Compile only (XLA memory analysis), on
fake CPU devices, one subprocess per device count.

  python benchmarks/contrastive_memory.py --devices=1,2,4,8,16,32 --per_device_batch=256 \
      --dim=512 --json=/tmp/contrastive_memory.json

Prints a table (MiB per device) and writes the same rows as JSON.
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(n: int, per_device_batch: int, dim: int) -> dict:
    """Runs in a process with n fake devices."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from maeclip_jax import losses, sharding
    mesh = sharding.make_mesh({"data": n})
    b = per_device_batch * n
    emb = jax.ShapeDtypeStruct((b, dim), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    fns = {"global": losses.contrastive_loss,
           "local": lambda i, t, s: losses.contrastive_loss_sharded(i, t, s, mesh, ("data",))}
    out = {"devices": n, "per_device_batch": per_device_batch, "global_batch": b, "dim": dim}
    for name, fn in fns.items():
        grad = jax.value_and_grad(lambda i, t, s: fn(i, t, s)[0], argnums=(0, 1, 2))
        compiled = jax.jit(grad).lower(emb, emb, scale).compile()
        out[f"{name}_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="1,2,4,8,16,32")
    ap.add_argument("--per_device_batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--json", default="contrastive_memory.json")
    ap.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        print(json.dumps(measure(a._worker, a.per_device_batch, a.dim)))
        return
    rows = []
    for n in [int(x) for x in a.devices.split(",")]:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        r = subprocess.run([sys.executable, __file__, f"--_worker={n}",
                            f"--per_device_batch={a.per_device_batch}", f"--dim={a.dim}"],
                           env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"devices {n:>3}  global batch {row['global_batch']:>6}  "
              f"global {row['global_temp_bytes'] / 2 ** 20:>9.2f} MiB  "
              f"local {row['local_temp_bytes'] / 2 ** 20:>7.2f} MiB", flush=True)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=2)
    print("\n| devices | global batch | global: temp MiB/device | local: temp MiB/device |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['devices']} | {r['global_batch']} | {r['global_temp_bytes'] / 2 ** 20:.2f} "
              f"| {r['local_temp_bytes'] / 2 ** 20:.2f} |")


if __name__ == "__main__":
    main()
