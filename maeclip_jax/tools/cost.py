r"""Cost report: compiles the train step on abstract shapes (no data, no parameters in memory)
on fake CPU devices, and predicts the step time and total training time on accelerators.

  python -m maeclip_jax.tools.cost --config=configs/maeclip_laion.py --mesh=data=2,fsdp=4 \
      --batch_size=64 --chips=256 --mfu=0.4

It prints the parameter count, FLOPs per example and per step (XLA's cost analysis of the
partitioned program, times the device count), bytes per device (state from the shardings;
temporaries from XLA's memory analysis at the compiled batch), and for TPU v4 / v5e / H100 /
H200: the step time at the config's batch size on --chips chips at --mfu model-FLOP
utilisation, and the days for config.total_steps steps. --batch_size compiles a smaller batch
(ViT-B/16 at 32k does not compile quickly on a CPU); FLOPs are per example, so the prediction
scales them to the config's batch. --json writes the same numbers.
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
flags.DEFINE_string("mesh", "data=-1", "Mesh axes for the compile, e.g. data=2,fsdp=4,model=1.")
flags.DEFINE_integer("num_devices", 8, "Fake CPU devices to compile for (mesh sizes multiply to it).")
flags.DEFINE_integer("batch_size", None, "Compile at this global batch (default: the config's).")
flags.DEFINE_integer("chips", 256, "Accelerator chips the prediction assumes.")
flags.DEFINE_float("mfu", 0.4, "Model-FLOP utilisation the prediction assumes.")
flags.DEFINE_string("json", None, "Also write the report here.")
flags.DEFINE_integer("vocab_size", 32000, "Text vocabulary size assumed when the config asks for a "
                     "sentencepiece tokenizer whose model file is not given (shapes need only the size).")
flags.mark_flags_as_required(["config"])

# Chips the prediction covers: bf16 dense peak FLOP/s per chip (maeclip_jax/perf.py).
CHIPS = ("TPU v4", "TPU v5e", "NVIDIA H100", "NVIDIA H200")


def parse_mesh(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, size = part.partition("=")
        if not size:
            raise ValueError(f"--mesh: expected name=size, got {part!r}")
        out[name.strip()] = int(size)
    return out


def report(config, mesh_axes: dict, batch_size=None, chips: int = 256, mfu: float = 0.4,
           vocab_size: int = 32000) -> dict:
    """Compiles config's train step on the current (fake) devices; returns the numbers.

    A sentencepiece tokenizer without its model file (the paper configs before a tokenizer is
    trained) counts as a vocabulary of `vocab_size` ids: the step's shapes need nothing else."""
    import jax
    import numpy as np
    from maeclip_jax import perf, sharding, train, validation
    from maeclip_jax.data.tokenizer import get_tokenizer
    from maeclip_jax.train_step import input_spec

    full_batch, total_steps = config.batch_size, config.total_steps
    if batch_size:
        config.batch_size = batch_size
    # Nothing is read: the step's input shapes come from config.input.image_size /
    # max_text_len alone, so any registered source passes the checks.
    config.input.source, config.input.data = "builtin", ""
    assumed_vocab = None
    if config.input.tokenizer == "sentencepiece" and not config.input.tokenizer_model:
        config.input.tokenizer, assumed_vocab = "builtin_words", vocab_size
    validation.validate(config, jax.device_count())
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    if assumed_vocab and "text" in config.model:
        config.model.text.vocab_size = assumed_vocab
    mesh = sharding.make_mesh(mesh_axes)
    t = train.setup(config, mesh)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         t.state_shapes, t.state_sharding)
    bsh = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
             for k, v in input_spec(config).items()}
    compiled = t.step.lower(state, batch).compile()
    flops_step = perf.compiled_flops(compiled) * jax.device_count()
    mem = compiled.memory_analysis()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t.state_shapes["params"]))
    per_example = flops_step / config.batch_size
    dtype = config.model.get("dtype", "float32")
    out = {
        "config": config.get("name", ""), "model": config.model.name, "params": n_params,
        "vocab_size": config.model.text.vocab_size if "text" in config.model else None,
        "mesh": dict(mesh.shape), "compiled_batch": config.batch_size, "config_batch": full_batch,
        "flops_per_example": per_example, "flops_per_step": per_example * full_batch,
        "state_bytes_per_device": sharding.bytes_per_device(t.state_shapes, t.state_sharding),
        "temp_bytes_per_device": int(getattr(mem, "temp_size_in_bytes", 0)),
        "argument_bytes_per_device": int(getattr(mem, "argument_size_in_bytes", 0)),
        "total_steps": total_steps, "chips": chips, "mfu": mfu, "dtype": dtype, "predicted": {},
    }
    for chip in CHIPS:
        peak = perf.PEAK_FLOPS["bfloat16"][chip]
        step_s = out["flops_per_step"] / (chips * peak * mfu)
        out["predicted"][chip] = {"peak_flops": peak, "step_seconds": step_s,
                                  "total_days": step_s * total_steps / 86400}
    return out


def format_report(r: dict) -> str:
    lines = [
        f"config {r['config']} ({r['model']}), compiled on mesh {r['mesh']} at batch "
        f"{r['compiled_batch']}",
        f"parameters            {r['params'] / 1e6:.1f} M (text vocabulary {r['vocab_size']})",
        f"FLOPs / example       {r['flops_per_example'] / 1e9:.4g} GFLOP (fwd + bwd + update)",
        f"FLOPs / step          {r['flops_per_step'] / 1e12:.4g} TFLOP at batch {r['config_batch']}",
        f"state / device        {r['state_bytes_per_device'] / 2 ** 20:.1f} MiB "
        f"(params + optimizer, mesh {r['mesh']})",
        f"temporaries / device  {r['temp_bytes_per_device'] / 2 ** 20:.1f} MiB at per-device batch "
        f"{r['compiled_batch'] // max(1, _prod(r['mesh']))}",
        f"prediction: {r['chips']} chips, MFU {r['mfu']:.0%} of bf16 peak, "
        f"{r['total_steps']} steps",
        f"{'chip':<12} {'peak TFLOP/s':>12} {'step (s)':>9} {'total (days)':>12}",
    ]
    for chip, p in r["predicted"].items():
        lines.append(f"{chip:<12} {p['peak_flops'] / 1e12:>12.0f} {p['step_seconds']:>9.3g} "
                     f"{p['total_days']:>12.3g}")
    return "\n".join(lines)


def _prod(d: dict) -> int:
    n = 1
    for v in d.values():
        n *= v
    return n


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={FLAGS.num_devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "jax" in sys.modules:
        raise RuntimeError("jax was imported before the fake device count was set")
    r = report(FLAGS.config, parse_mesh(FLAGS.mesh), FLAGS.batch_size, FLAGS.chips, FLAGS.mfu,
               FLAGS.vocab_size)
    print(format_report(r), flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    app.run(main)
