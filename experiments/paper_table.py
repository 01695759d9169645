r"""The paper's comparison in miniature: MAE, M3AE, CLIP, MAE-CLIP x {GAP, MAX} pooling x seeds,
each trained for the same budget on the built-in dataset, then evaluated (linear probe for all,
zero-shot where there is a text tower) and tabulated as mean +- std over seeds.

Command (the full miniature: 16 runs at the budget of the README demo and of every `:tiny`
config, `config_lib.demo_budget`: 1,600 steps x 32 examples, about 5 minutes a run here):
  python experiments/paper_table.py --workdir=/tmp/paper_table --seeds=0,1

A short version (a quarter of the budget):
  python experiments/paper_table.py --workdir=/tmp/paper_table_short --steps=400 --seeds=0,1

Every cell also gets its random-features baseline: the same model and pooling evaluated at
initialisation (`--mode=init`, untrained, one per seed), the number a trained probe has to beat;
`--no_init` leaves it out. `--reuse=experiments/results/paper_table.json` takes the trained runs
recorded in an earlier table instead of training them again (only the missing runs are run).

It prints two tables in the paper's layout (linear probe per model and pooling; zero-shot and
linear probe per pooling) and writes `<out>.json` (every run's results and timings) and
`<out>.md`. Every run uses `configs/<model>_cc12m.py:tiny` (the same model family and
objectives as the paper-scale configs, ViT-mu/8 at 64 px) with only `total_steps`, `seed` and
`model.image.pooling` changed, through `maeclip_jax.train.train_and_evaluate`. Finished runs in
`--workdir` are read back (their results.json), so an interrupted table resumes, and seeds can
run as separate processes (`--seeds=0`, `--seeds=1`) gathered by a final `--seeds=0,1`.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

MODELS = ("mae", "m3ae", "clip", "maeclip")
TITLES = {"mae": "MAE", "m3ae": "M3AE", "clip": "CLIP", "maeclip": "MAE-CLIP"}
CHANCE = 1 / 24  # built-in evaluation split: 24 colour x shape classes


def run_config(model: str, pooling: str, seed: int, steps: int, batch_size: int):
    from maeclip_jax.paper_configs import paper_config
    c = paper_config(model, "cc12m", "tiny")
    c.name = f"{model}_{pooling}_s{seed}"
    c.seed = seed
    c.total_steps = steps
    c.batch_size = batch_size
    c.optimizer.warmup_steps = max(1, steps // 10)  # demo_budget's 10% warm-up
    c.model.image.pooling = pooling
    c.log_every_steps = max(1, steps // 4)
    c.checkpoint_every_steps = steps
    return c


def finished_run(run_dir: str, steps: int) -> tuple:
    """(results, seconds) of a run already trained to `steps` and evaluated, else (None, None).

    Lets an interrupted table resume, and lets seeds run as separate processes whose runs a
    final call with every seed gathers (seconds is None if the run was not timed by us).
    """
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        res = json.load(f)
    if res.get("step") != steps or "linear_probe/top1" not in res:
        return None, None
    timing = os.path.join(run_dir, "paper_table_run.json")
    seconds = json.load(open(timing))["seconds"] if os.path.exists(timing) else None
    return res, seconds


def mean_std(values) -> tuple:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values) -> str:
    if not values:
        return "—"
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{100 * m:.1f} (1 seed)"
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def aggregate(runs: list, models, poolings) -> dict:
    out = {}
    for m in models:
        for p in poolings:
            cell = [r for r in runs if r["model"] == m and r["pooling"] == p]
            rs = [r for r in cell if not r.get("init")]
            out[f"{m}/{p}"] = {
                "linear_probe_top1_init": [r["results"]["linear_probe/top1"] for r in cell
                                           if r.get("init")],
                "linear_probe_top1": [r["results"]["linear_probe/top1"] for r in rs],
                "zero_shot_top1": [r["results"]["zero_shot/top1"] for r in rs
                                   if "zero_shot/top1" in r["results"]],
                "seeds": [r["seed"] for r in rs],
                "train_eval_seconds": [r["seconds"] for r in rs],
            }
    return out


def markdown(agg: dict, models, poolings, meta: dict) -> str:
    with_init = any(a["linear_probe_top1_init"] for a in agg.values())
    lines = [f"Built-in dataset, {meta['steps']} steps x batch {meta['batch_size']} per run, "
             f"seeds {meta['seeds']}; top-1 accuracy in %, mean ± std over seeds "
             f"(chance {100 * CHANCE:.1f}). Linear probe: ridge on frozen pooled image features.",
             "", "Linear probing (as the paper's Table 'Linear-probing on ImageNet'):", "",
             "| Model | " + " | ".join(p.upper() for p in poolings)
             + "".join(f" | {p.upper()}, untrained" for p in poolings if with_init) + " |",
             "|---|" + "---|" * len(poolings) * (2 if with_init else 1)]
    for m in models:
        lines.append(f"| {TITLES[m]} | " + " | ".join(
            [fmt(agg[f"{m}/{p}"]["linear_probe_top1"]) for p in poolings]
            + [fmt(agg[f"{m}/{p}"]["linear_probe_top1_init"]) for p in poolings if with_init])
            + " |")
    if with_init:
        lines += ["", "Untrained: the same model and pooling evaluated at initialisation "
                  "(random features, one per seed): what training has to beat."]
    lines += ["", "Pooling (as the paper's Table 'ImageNet performance'; zero-shot only with a "
              "text tower):", "", "| Model | Pooling | Zero-shot | Linear Probing |",
              "|---|---|---|---|"]
    for m in models:
        for i, p in enumerate(poolings):
            a = agg[f"{m}/{p}"]
            lines.append(f"| {TITLES[m] if i == 0 else ''} | {p.upper()} | "
                         f"{fmt(a['zero_shot_top1'])} | {fmt(a['linear_probe_top1'])} |")
    timed = [t for a in agg.values() for t in a["train_eval_seconds"] if t is not None]
    if timed:
        lines += ["", f"Train + evaluate time per run: mean {np.mean(timed):.0f} s over "
                  f"{len(timed)} timed runs (sum {sum(timed) / 60:.0f} min) on {meta['host']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/paper_table")
    ap.add_argument("--out", default=None, help="output path without suffix "
                    "(default: <workdir>/paper_table)")
    from maeclip_jax import config_lib
    demo = config_lib.demo_budget(config_lib.base_config())
    ap.add_argument("--steps", type=int, default=demo.total_steps,
                    help="training steps per run (the budget)")
    ap.add_argument("--batch_size", type=int, default=demo.batch_size)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--poolings", default="gap,max")
    ap.add_argument("--collect_only", action="store_true",
                    help="train nothing: tabulate the runs already finished in --workdir")
    ap.add_argument("--no_init", action="store_true",
                    help="leave out the untrained (random-features) baseline of each cell")
    ap.add_argument("--reuse", default="",
                    help="a paper_table.json whose recorded runs are taken as they are")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    poolings = [p for p in args.poolings.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: {m!r} is not one of {MODELS}")

    from absl import logging
    logging.set_verbosity(logging.WARNING)
    import jax
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    from maeclip_jax import train

    out = args.out or os.path.join(args.workdir, "paper_table")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    reused = {}
    if args.reuse:
        with open(args.reuse) as f:
            prev = json.load(f)
        if prev["meta"]["steps"] != args.steps or prev["meta"]["batch_size"] != args.batch_size:
            ap.error(f"--reuse={args.reuse}: its runs have {prev['meta']['steps']} steps x "
                     f"{prev['meta']['batch_size']}, not {args.steps} x {args.batch_size}")
        reused = {(r["model"], r["pooling"], r["seed"], bool(r.get("init"))): r
                  for r in prev["runs"]}
    runs, t_start = [], time.perf_counter()
    kinds = (False,) if args.no_init else (False, True)
    for seed in seeds:  # seeds outermost: a cut-short table still covers every cell once
        for m in models:
            for p in poolings:
                for init in kinds:
                    config = run_config(m, p, seed, args.steps, args.batch_size)
                    if init:
                        config.name += "_init"
                    run_dir = os.path.join(args.workdir, config.name)
                    if (m, p, seed, init) in reused:
                        r = reused[(m, p, seed, init)]
                        res, dt = r["results"], r["seconds"]
                    else:
                        res, dt = finished_run(run_dir, 0 if init else args.steps)
                    if res is None and args.collect_only:
                        print(f"{config.name}: not finished in {run_dir}; left out", flush=True)
                        continue
                    if res is None:
                        t0 = time.perf_counter()
                        res = train.train_and_evaluate(config, run_dir,
                                                       mode="init" if init else "train")
                        dt = time.perf_counter() - t0
                        with open(os.path.join(run_dir, "paper_table_run.json"), "w") as f:
                            json.dump({"seconds": dt}, f)
                    runs.append({"model": m, "pooling": p, "seed": seed, "init": init,
                                 "seconds": dt,
                                 "results": {k: v for k, v in res.items()
                                             if isinstance(v, (int, float))}})
                    zs = res.get("zero_shot/top1")
                    print(f"[{time.perf_counter() - t_start:7.0f}s] {config.name:>21}: "
                          f"linear_probe/top1={res['linear_probe/top1']:.3f}"
                          + (f" zero_shot/top1={zs:.3f}" if zs is not None else "")
                          + (f" ({dt:.0f}s)" if dt is not None else " (cached)"), flush=True)
    meta = {"steps": args.steps, "batch_size": args.batch_size, "seeds": seeds,
            "total_seconds": time.perf_counter() - t_start,
            "host": f"{os.cpu_count()} CPU cores, {jax.devices()[0].device_kind}",
            "command": " ".join(["python experiments/paper_table.py"] + sys.argv[1:])}
    agg = aggregate(runs, models, poolings)
    md = markdown(agg, models, poolings, meta)
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "table": agg, "runs": runs}, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(md + "\n")
    print("\n" + md + f"\n\nWritten: {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
