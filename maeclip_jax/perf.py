"""FLOP counting from XLA and the peak FLOP/s that model-FLOP utilisation (MFU) divides by."""
import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device (per chip) at the precision the model computes in.
# bf16 figures from the vendors' data sheets; f32 on GPUs is TF32 tensor-core peak.
PEAK_FLOPS = {
    "bfloat16": {
        "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
        "TPU v6 lite": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
        "NVIDIA A100": 312e12,
    },
    "float32": {
        "NVIDIA H100": 494e12, "NVIDIA H200": 494e12, "NVIDIA A100": 156e12,
        "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    },
}


def compiled_flops(compiled) -> float:
    """FLOPs of one call of a compiled computation, from XLA's cost analysis (per device for an
    SPMD-partitioned computation), or 0 when the backend gives none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def measure_matmul_flops(n: int = 4096, dtype=jnp.float32, repeats: int = 5) -> float:
    """Achieved FLOP/s of an n x n matmul on device 0 (a same-process ceiling), best of
    `repeats`. The training loop's MFU on CPU and benchmarks/train_step.py's `frac_matmul_*`
    both divide by this number (4096^2, the model's compute dtype)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def peak_flops_per_device(dtype: str = "float32", override: Optional[float] = None) -> tuple:
    """(peak FLOP/s per device, where the number came from).

    Uses `override` (config.peak_flops_per_device) if given, else the table above for the
    device kind, else (CPUs, unknown chips) a matmul measured here, once.
    """
    if override:
        return float(override), "config"
    kind = jax.devices()[0].device_kind
    for name, value in PEAK_FLOPS.get(dtype, {}).items():
        if kind.startswith(name) or name in kind:
            return value, f"table:{name}"
    measured = measure_matmul_flops(dtype=jnp.dtype(dtype))
    logging.info("peak FLOP/s for %r unknown: using a measured %s matmul, %.1f GFLOP/s",
                 kind, dtype, measured / 1e9)
    return measured, "measured_matmul"
