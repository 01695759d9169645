r"""Train-step speed and memory, held against the machine's own ceiling.

Command (about 8 minutes on a quiet 2-core CPU; prints tables, writes JSON):
  PYTHONPATH=. python benchmarks/train_step.py --out=/tmp/bench_train_step.json
Quick smoke run (one width, fewer steps):
  PYTHONPATH=. python benchmarks/train_step.py --widths=192 --steps=3 --sections=steps

For every model in `maeclip_jax.models.names()` at each width it builds the REAL jitted, donated
train step of `maeclip_jax.train.setup()` and reports: compile time, median step time after a
warm-up step, examples/s, XLA FLOPs per step (`perf.compiled_flops`, the number the training loop
logs MFU from), achieved FLOP/s, and that as a fraction of a 4096x4096 f32 (and bf16) matmul
measured in the SAME process, before and after the rows (the median of those measurements is the
ceiling; their spread says how noisy the machine was). Then:
  - ratio:   MAE-CLIP step time / CLIP step time next to their FLOP ratio;
  - parts:   forward+backward of each part of the MAE-CLIP step on its own (unmasked image pass,
             text pass, masked image pass, decoder): its share of the summed time and FLOPs;
  - masking: the MAE-CLIP step with each `masking.take_tokens` formulation;
  - memory:  XLA's peak memory of the compiled step at growing batch sizes, with/without remat.
With an accelerator (or --vit_b16) it adds ViT-B/16 at 224 px in bf16 (benchmarks/gpu_h200.sh).

Sizes: each row is a `width`-wide, `--depth`-block image tower (patch 8 at 64 px: 64 patches)
with a text tower of the same size (32 tokens), a decoder half as wide (2 blocks), batch
`--batch`. Timings are medians of `--steps` steps; the machine's noise shows in `step_min_s`
and in the spread of the matmul measurements.
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maeclip_jax import config_lib, masking, models, perf, sharding, train  # noqa: E402
from maeclip_jax.data.tokenizer import get_tokenizer  # noqa: E402

# The objectives each model trains, as its config sets them (m3ae: the models helper's recipe).
LOSSES = {
    "clip": {"contrastive": 1.0, "reconstruction": 0.0},
    "mae": {"contrastive": 0.0, "reconstruction": 1.0},
    "maeclip": {"contrastive": 1.0, "reconstruction": 1.0},
    "m3ae": {"contrastive": 0.0, "reconstruction": 0.0, "m3ae": 1.0, "m3ae_text_weight": 0.5},
}


def bench_config(name: str, width: int, depth: int = 4, batch: int = 32, image_size: int = 64,
                 patch: int = 8, dtype: str = "float32", remat: str = "none"):
    """The config of one benchmark row (see the module docstring for the sizes)."""
    c = config_lib.base_config()
    c.name = f"bench_{name}_{width}"
    c.model.name = name
    c.batch_size = batch
    c.input.image_size = image_size
    heads = max(1, width // 64)
    tower = dict(width=width, depth=depth, mlp_dim=4 * width, num_heads=heads)
    c.model.image.update(dict(variant=f"mu/{patch}", patch_size=patch, **tower))
    c.model.text.update(dict(variant="mu", **tower))
    dw = max(64, width // 2)
    c.model.decoder.update(dict(width=dw, depth=2, mlp_dim=4 * dw, num_heads=max(1, dw // 64)))
    c.model.embed_dim = min(512, width)
    c.model.dtype = dtype
    c.model.remat = remat
    for k, v in LOSSES.get(name, {}).items():
        c.loss[k] = v
    return c


def vit_b16_config(name: str, batch: int = 256, dtype: str = "bfloat16"):
    """ViT-B/16 at 224 px with the paper's text tower (12 x 512) and MAE decoder (8 x 512)."""
    c = bench_config(name, 768, batch=batch, image_size=224, patch=16, dtype=dtype)
    c.model.image.update(dict(variant="B/16", width=768, depth=12, mlp_dim=3072, num_heads=12))
    c.model.text.update(dict(variant="M", width=512, depth=12, mlp_dim=2048, num_heads=8))
    c.model.decoder.update(dict(width=512, depth=8, mlp_dim=2048, num_heads=16))
    c.model.embed_dim = 512
    c.input.max_text_len = 77
    c.name = f"bench_{name}_B16"
    return c


def _training(config):
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    return config, train.setup(config, mesh), mesh


def _batch(config, mesh, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    s, b = config.input.image_size, config.batch_size
    text = rng.integers(1, config.model.text.get("vocab_size") or 30,
                        (b, config.input.max_text_len)).astype(np.int32)
    text[:, -4:] = 0  # some padding, as real captions have
    batch = {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8), "text": text}
    return {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}


def time_step(config, steps: int) -> dict:
    """Compiles the real train step, runs one warm-up step and `steps` timed ones."""
    config, t, mesh = _training(config)
    state = t.init(jax.random.PRNGKey(0))
    batch = _batch(config, mesh)
    t0 = time.perf_counter()
    compiled = t.step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = perf.compiled_flops(compiled)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    assert np.isfinite(float(metrics["loss"])), "the benchmarked step produced a non-finite loss"
    med = float(np.median(times))
    return {"compile_s": compile_s, "step_s": med, "step_min_s": float(min(times)),
            "step_times_s": times, "examples_per_s": config.batch_size / med,
            "flops_per_step": flops, "flops_per_s": flops / med}


def time_parts(config, repeats: int) -> dict:
    """Forward+backward time and FLOPs of each part of the MAE-CLIP step, each jitted alone."""
    config, t, mesh = _training(config)
    model = t.model
    params = t.init(jax.random.PRNGKey(0))["params"]
    batch = _batch(config, mesh)
    from maeclip_jax.train_step import normalize_images
    images = normalize_images(batch["image"], config)
    mask = masking.random_mask(jax.random.PRNGKey(1), config.batch_size, model.num_patches,
                               config.masking.ratio)

    def image_full(m):
        return m.encode_image(images)["pooled"]

    def text(m):
        return m.encode_text(batch["text"])["pooled"]

    def image_masked(m):
        return m.image_encoder(images, ids_keep=mask.ids_keep)["tokens"]

    def masked_and_decoder(m):
        return m.reconstruct_image(images, mask)

    parts = {"image_unmasked": image_full, "text": text, "image_masked": image_masked,
             "masked+decoder": masked_and_decoder}
    compiled = {}
    for name, fn in parts.items():
        loss = lambda p, fn=fn: jnp.sum(model.apply({"params": p}, method=fn).astype(jnp.float32))
        compiled[name] = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        jax.block_until_ready(compiled[name](params))
    times = {k: [] for k in parts}
    for _ in range(repeats):  # interleaved, so load changes hit every part alike
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(params))
            times[name].append(time.perf_counter() - t0)
    out = {k: {"s": float(np.median(v)), "flops": perf.compiled_flops(compiled[k])}
           for k, v in times.items()}
    out["decoder"] = {k: out["masked+decoder"][k] - out["image_masked"][k] for k in ("s", "flops")}
    del out["masked+decoder"]
    total_s = sum(v["s"] for v in out.values())
    total_f = sum(v["flops"] for v in out.values())
    for v in out.values():
        v["time_share"], v["flop_share"] = v["s"] / total_s, v["flops"] / total_f
    return out


def time_input_pipeline(steps: int) -> dict:
    """The demo config's step on one fixed device batch vs fed by the real tf.data pipeline
    (`pipeline.train_iterator`, prefetch to device) as the training loop feeds it: the
    difference is what the host's input work costs the step on this machine."""
    from maeclip_jax.data import pipeline
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "maeclip_tiny.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config, t, mesh = _training(demo.get_config())
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    batches = pipeline.train_iterator(config, tok, 0, sharding.batch_sharding(mesh))
    state = t.init(jax.random.PRNGKey(0))
    fixed = next(batches)
    compiled = t.step.lower(state, fixed).compile()
    state, m = compiled(state, fixed)
    jax.block_until_ready(m)
    out = {}
    for mode in ("fixed_batch", "pipeline", "fixed_batch_again"):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, fixed if mode.startswith("fixed") else next(batches))
        jax.block_until_ready(m)
        out[mode + "_s"] = (time.perf_counter() - t0) / steps
    out["pipeline_overhead"] = out["pipeline_s"] / (
        0.5 * (out["fixed_batch_s"] + out["fixed_batch_again_s"])) - 1.0
    out["flops_per_step"] = perf.compiled_flops(compiled)
    out["batch"] = config.batch_size
    return out


def memory(config) -> dict:
    """XLA's memory analysis of the compiled step (bytes)."""
    config, t, mesh = _training(config)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
             for k, v in train.input_spec(config).items()}
    compiled = t.step.lower(t.state_shapes, batch).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {k: int(getattr(ma, k, 0) or 0) for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
        "alias_size_in_bytes", "generated_code_size_in_bytes")}
    # Peak live bytes of one step: arguments + outputs not aliased onto (donated) arguments + temps.
    out["peak_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                         - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


class Ceiling:
    """Same-process matmul FLOP/s, measured again between benchmark sections."""

    def __init__(self, dtypes, n: int):
        self.n, self.samples = n, {jnp.dtype(d).name: [] for d in dtypes}

    def measure(self):
        for d in self.samples:
            self.samples[d].append(perf.measure_matmul_flops(self.n, jnp.dtype(d)))

    def value(self, dtype: str = "float32") -> float:
        return float(np.median(self.samples[dtype]))


def _fmt_table(rows, cols):
    head = [c for c, _ in cols]
    body = [[fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(models.names()))
    # 768 is ViT-B's width: where the paper's towers sit; 384 is the target's lower bound.
    ap.add_argument("--widths", default="192,384,768")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row (after 1 warm-up)")
    ap.add_argument("--sections", default="steps,parts,masking,pipeline,memory")
    ap.add_argument("--memory_batches", default="32,256")
    ap.add_argument("--matmul_n", type=int, default=4096)
    ap.add_argument("--vit_b16", action="store_true",
                    help="add ViT-B/16 224 px bf16 rows (on by default with an accelerator)")
    ap.add_argument("--b16_batch", type=int, default=256)
    ap.add_argument("--dtype", default="float32", help="compute dtype of the small rows")
    ap.add_argument("--out", default="/tmp/bench_train_step.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    names = [m for m in args.models.split(",") if m]
    widths = [int(w) for w in args.widths.split(",") if w]
    accel = jax.devices()[0].platform != "cpu"
    ceiling = Ceiling(("float32", "bfloat16"), args.matmul_n)
    ceiling.measure()
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "machine": f"{platform.machine()} {os.cpu_count()} cpus; "
                         f"{jax.devices()[0].device_kind}; jax {jax.__version__}",
              "args": vars(args), "rows": [], "ratio": [], "parts": {}, "masking": [],
              "memory": []}
    dtype_ceiling = lambda d: "bfloat16" if d == "bfloat16" else "float32"

    if "steps" in sections:
        configs = [(n, w, bench_config(n, w, args.depth, args.batch, dtype=args.dtype))
                   for w in widths for n in names]
        if accel or args.vit_b16:
            configs += [(n, "B/16", vit_b16_config(n, args.b16_batch)) for n in names]
        for n, w, c in configs:
            try:
                r = time_step(c, args.steps)
            except Exception as e:  # a model this script does not know how to configure
                print(f"skipping {n} width {w}: {type(e).__name__}: {e}", flush=True)
                continue
            r.update(model=n, width=w, batch=c.batch_size, image_size=c.input.image_size,
                     dtype=c.model.dtype)
            result["rows"].append(r)
            print(f"  {n:8s} width {w}: {r['step_s']:.3f} s/step, "
                  f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
        ceiling.measure()
        for r in result["rows"]:
            cd = dtype_ceiling(r["dtype"])
            r["frac_matmul_f32"] = r["flops_per_s"] / ceiling.value("float32")
            r["frac_matmul_bf16"] = r["flops_per_s"] / ceiling.value("bfloat16")
            r["mfu_vs_matmul"] = r["flops_per_s"] / ceiling.value(cd)
            peak, src = perf.peak_flops_per_device(r["dtype"]) if accel else (None, None)
            r["mfu_vs_peak"] = r["flops_per_s"] / peak if peak else None
        by = {(r["model"], r["width"]): r for r in result["rows"]}
        for w in widths + (["B/16"] if accel or args.vit_b16 else []):
            if ("maeclip", w) in by and ("clip", w) in by:
                a, b = by[("maeclip", w)], by[("clip", w)]
                tr, fr = a["step_s"] / b["step_s"], a["flops_per_step"] / b["flops_per_step"]
                result["ratio"].append({"width": w, "time_ratio": tr, "flop_ratio": fr,
                                        "time_over_flop": tr / fr})

    if "parts" in sections and "maeclip" in names and widths:
        for w in widths[-1:]:  # the widest row only: each part is one more compilation
            result["parts"][str(w)] = time_parts(
                bench_config("maeclip", w, args.depth, args.batch, dtype=args.dtype),
                max(3, args.steps))

    if "masking" in sections and "maeclip" in names and widths:
        w = widths[0]
        default = masking.TAKE_IMPL
        rows = {(r["model"], r["width"]): r for r in result["rows"]}
        try:
            for impl in masking.TAKE_IMPLS:
                masking.TAKE_IMPL = impl
                # The default formulation's row was timed above already.
                r = rows.get(("maeclip", w)) if impl == default else None
                r = r or time_step(bench_config("maeclip", w, args.depth, args.batch,
                                                dtype=args.dtype), args.steps)
                result["masking"].append({"impl": impl, "width": w, "step_s": r["step_s"],
                                          "step_min_s": r["step_min_s"],
                                          "flops_per_step": r["flops_per_step"],
                                          "per_example": impl != "shared",
                                          "default": impl == default})
                print(f"  masking {impl}: {r['step_s']:.3f} s/step", flush=True)
        finally:
            masking.TAKE_IMPL = default

    if "pipeline" in sections:
        result["pipeline"] = time_input_pipeline(max(5, args.steps))

    if "memory" in sections and widths:
        w = widths[0]
        for b in [int(x) for x in args.memory_batches.split(",")]:
            for remat in ("none", "full"):
                m = memory(bench_config("maeclip", w, args.depth, b, dtype=args.dtype,
                                        remat=remat))
                if m:
                    result["memory"].append(dict(m, width=w, batch=b, remat=remat))
    ceiling.measure()
    result["matmul_flops_per_s"] = {d: v for d, v in ceiling.samples.items()}
    result["ceiling_f32"] = ceiling.value("float32")
    result["ceiling_bf16"] = ceiling.value("bfloat16")
    print_report(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


def print_report(result: dict) -> None:
    g = lambda x: x / 1e9
    print(f"\n# train-step benchmark  {result['date_utc']} UTC  {result['machine']}")
    for d, v in result["matmul_flops_per_s"].items():
        print(f"same-process {result['args']['matmul_n']}^2 {d} matmul: median "
              f"{g(np.median(v)):.1f} GFLOP/s (samples {', '.join(f'{g(x):.1f}' for x in v)})")
    if result["rows"]:
        rows = [dict(r, gflop=g(r["flops_per_step"]), gflops=g(r["flops_per_s"])) for r in result["rows"]]
        print("\n" + _fmt_table(rows, [
            ("model", "{}"), ("width", "{}"), ("batch", "{}"), ("dtype", "{}"),
            ("compile_s", "{:.1f}"), ("step_s", "{:.3f}"), ("step_min_s", "{:.3f}"),
            ("examples_per_s", "{:.1f}"), ("gflop", "{:.1f}"), ("gflops", "{:.1f}"),
            ("frac_matmul_f32", "{:.2f}"), ("frac_matmul_bf16", "{:.2f}"),
            ("mfu_vs_peak", "{:.3f}")]))
    if result["ratio"]:
        print("\nMAE-CLIP / CLIP (target: time_over_flop <= 1.1)")
        print(_fmt_table(result["ratio"], [("width", "{}"), ("time_ratio", "{:.2f}"),
                                           ("flop_ratio", "{:.2f}"), ("time_over_flop", "{:.2f}")]))
    for w, parts in result["parts"].items():
        print(f"\nMAE-CLIP step parts, width {w} (forward+backward of each part alone)")
        rows = [dict(v, part=k, gflop=g(v["flops"]), ms=v["s"] * 1e3) for k, v in parts.items()]
        print(_fmt_table(rows, [("part", "{}"), ("ms", "{:.1f}"), ("gflop", "{:.2f}"),
                                ("time_share", "{:.2f}"), ("flop_share", "{:.2f}")]))
    if result["masking"]:
        print("\nmasking formulation on the MAE-CLIP step")
        rows = [dict(r, gflop=g(r["flops_per_step"])) for r in result["masking"]]
        print(_fmt_table(rows, [("impl", "{}"), ("width", "{}"), ("per_example", "{}"),
                                ("default", "{}"), ("step_s", "{:.3f}"), ("step_min_s", "{:.3f}"),
                                ("gflop", "{:.2f}")]))
    if result.get("pipeline"):
        p = result["pipeline"]
        print(f"\ndemo config (configs/maeclip_tiny.py, batch {p['batch']}): "
              f"{p['fixed_batch_s']:.3f} / {p['fixed_batch_again_s']:.3f} s/step on a fixed "
              f"batch, {p['pipeline_s']:.3f} s/step fed by the tf.data pipeline "
              f"({100 * p['pipeline_overhead']:+.0f}%), {g(p['flops_per_step']):.1f} GFLOP/step")
    if result["memory"]:
        print("\nMAE-CLIP step memory (XLA memory analysis)")
        rows = [dict(r, peak_mib=r["peak_bytes"] / 2**20, temp_mib=r["temp_size_in_bytes"] / 2**20)
                for r in result["memory"]]
        print(_fmt_table(rows, [("width", "{}"), ("batch", "{}"), ("remat", "{}"),
                                ("peak_mib", "{:.1f}"), ("temp_mib", "{:.1f}")]))


if __name__ == "__main__":
    main()
