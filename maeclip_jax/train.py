"""The trainer, top to bottom: checks -> mesh -> tokenizer, model, optimizer -> shapes via
jax.eval_shape -> shardings -> restore or sharded init -> one donated, compiled step ->
evaluators -> loop (log, checkpoint, evaluate) -> results."""
import functools
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from clu import metric_writers

from maeclip_jax import checkpoint, config_lib, models, optim, perf, sharding, validation
from maeclip_jax import evaluation
from maeclip_jax.data import pipeline
from maeclip_jax.data import tokenizer as tokenizers
from maeclip_jax.train_step import init_state, input_spec, make_train_step


def prepare_config(config: ml_collections.ConfigDict, tokenizer) -> ml_collections.ConfigDict:
    """Fills fields derived from other parts: the text vocabulary size from the tokenizer, and
    each tower's sizes from its `variant` where not set explicitly (so that the config a workdir
    records, config.json, says width 128 rather than None for 'mu/8')."""
    config = ml_collections.ConfigDict(config.to_dict())
    for tower in ("image", "text"):
        cfg = config.model.get(tower)
        if cfg is not None and cfg.get("variant"):
            for key, value in models.tower_kwargs(cfg).items():
                if cfg.get(key) is None:
                    cfg[key] = value
    if "text" in config.model:
        vs = config.model.text.get("vocab_size")
        if vs is None:
            config.model.text.vocab_size = tokenizer.vocab_size
        elif vs != tokenizer.vocab_size:
            raise validation.ConfigError(
                f"config.model.text.vocab_size={vs} but the tokenizer "
                f"{config.input.tokenizer!r} has {tokenizer.vocab_size} ids; leave it unset")
    return config


def write_results(workdir: str, results: dict, config=None, not_applicable=None) -> None:
    """results.json, and results.md (the paper's table layout) when the config is given;
    `not_applicable`: {evaluator: reason} of those skipped for this model (n/a in results.md)."""
    if jax.process_index() == 0:
        from maeclip_jax.evaluation import report  # through tf.io.gfile: gs:// works
        report.write_json(workdir, results)
        if config is not None:
            report.write_markdown(workdir, results, config.get("evals", {}).to_dict()
                                  if config.get("evals") else {}, not_applicable)


def format_table(results: dict) -> str:
    rows = [(k, v) for k, v in sorted(results.items())]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    from maeclip_jax.evaluation.report import format_value
    for k, v in rows:
        lines.append(f"{k:<{width}}  {format_value(v)}")
    return "\n".join(lines)


class Training(NamedTuple):
    """Everything built from a config and a mesh, before any data or checkpoint is touched."""
    config: ml_collections.ConfigDict
    model: Any
    tx: Any
    schedule: Any
    state_shapes: Any      # pytree of ShapeDtypeStruct (jax.eval_shape of the init)
    state_sharding: Any    # pytree of NamedSharding
    init: Callable         # rng -> state, created directly sharded
    step: Callable         # jitted (state, batch) -> (state, metrics), state donated


def setup(config: ml_collections.ConfigDict, mesh) -> Training:
    """Model, optimizer, abstract state, shardings, sharded init and the jitted train step."""
    model = models.build(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
    init_fn = functools.partial(init_state, model, tx, config)
    state_shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    repl = sharding.replicated(mesh)
    # Params and optimizer state by config.sharding's regex rules (FSDP / tensor parallel);
    # created directly sharded by the jitted init, never whole on one device.
    state_sh = sharding.state_shardings(state_shapes, mesh, config.get("sharding"))
    init = jax.jit(init_fn, out_shardings=state_sh)
    raw_step = make_train_step(model, tx, schedule, config)

    def step_fn(state, batch):
        # Traced with the mesh set: activation constraints and the sharded contrastive loss.
        with sharding.activation_context(mesh):
            return raw_step(state, batch)

    step = jax.jit(step_fn,
                   in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sh, repl), donate_argnums=(0,))
    return Training(config, model, tx, schedule, state_shapes, state_sh, init, step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mode: str = "train") -> dict:
    """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns results.

    mode: 'train' (train to config.total_steps, then evaluate), 'eval' (evaluate the latest
    checkpoint only) or 'init' (evaluate the freshly initialised model: the random-features
    baseline a trained model's probe should beat; nothing is trained or saved but results).
    """
    if mode not in ("train", "eval", "init"):
        raise ValueError(f"mode must be 'train', 'eval' or 'init', got {mode!r}")
    # 1. Checks that fail fast, before anything is built or compiled.
    validation.validate(config, jax.device_count(), jax.process_count())
    tf.io.gfile.makedirs(workdir)  # local or gs:// (orbax, tf.io.gfile and CLU write there)
    mesh = sharding.make_mesh(config.mesh)
    batch_sh = sharding.batch_sharding(mesh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

    # 2.-3. Tokenizer, model, optimizer; shapes via eval_shape; shardings; the step.
    tokenizer = tokenizers.from_config(config.input)
    config = prepare_config(config, tokenizer)
    training = setup(config, mesh)
    model, state_sh = training.model, training.state_sharding
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(training.state_shapes["params"]))
    logging.info("model %s: %.2fM parameters; mesh %s", config.model.name, n_params / 1e6,
                 dict(mesh.shape))

    # 4. Restore the latest checkpoint, or initialise directly sharded.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   config.checkpoint_every_steps, config.keep_checkpoints)
    resuming = ckpt.latest_step() is not None and mode != "init"
    if mode == "init" and ckpt.latest_step() is not None:
        raise validation.ConfigError(
            f"--mode=init evaluates an untrained model and writes its results.json, but "
            f"{workdir} holds a trained run (step {ckpt.latest_step()}); use a new --workdir")
    config_lib.check_and_record(config, workdir, resuming, mode)
    if resuming:
        state, meta = ckpt.restore(checkpoint.abstract_with_shardings(training.state_shapes, state_sh))
        logging.info("resumed from checkpoint at step %d", meta["step"])
        if mode == "train" and meta["step"] >= config.total_steps:
            logging.warning("%s holds a finished run (step %d of %d): evaluating it without "
                            "training; use a new --workdir to train again", workdir,
                            meta["step"], config.total_steps)
    elif mode == "eval":
        raise FileNotFoundError(f"--mode=eval: no checkpoint in {workdir}/checkpoints")
    else:
        state = training.init(jax.random.PRNGKey(config.seed))
    step = int(jax.device_get(state["step"]))

    # 5. Evaluators.
    try:
        evaluators = evaluation.build_evaluators(config, model, tokenizer, mesh, workdir)
    except (ValueError, KeyError, FileNotFoundError) as e:  # each message names its field
        raise validation.ConfigError(e.args[0] if e.args else str(e)) from e

    def evaluate(at_step: int, params) -> dict:
        # params passed in: the train loop's state is donated each step, so a closure over
        # `state` here would read deleted arrays.
        t0 = time.perf_counter()
        res = evaluation.run_evaluators(evaluators, params)
        writer.write_scalars(at_step, dict(res))  # written asynchronously: pass a copy
        logging.info("evaluation at step %d took %.1fs", at_step, time.perf_counter() - t0)
        return res

    # 6. The one train step, compiled ahead of time with the state donated. Calling the
    # compiled executable (not the jit wrapper) makes any shape change an error, never a
    # silent recompile.
    if mode == "train" and step < config.total_steps:
        batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
                      for k, v in input_spec(config).items()}
        # The input starts now, so that its first batch is read while the step compiles.
        batches = pipeline.train_iterator(config, tokenizer, step, batch_sh,
                                          state_dir=os.path.join(workdir, "data_state"))
        t0 = time.perf_counter()
        compiled_step = training.step.lower(state, batch_spec).compile()
        # XLA reports per-device FLOPs of the partitioned program.
        flops_per_step = perf.compiled_flops(compiled_step) * jax.device_count()
        peak, peak_src = perf.peak_flops_per_device(config.model.get("dtype", "float32"),
                                                    config.get("peak_flops_per_device"))
        # Fake CPU devices share one processor: measure against one device's (= the host's) peak.
        n_peak = 1 if jax.devices()[0].platform == "cpu" else jax.device_count()
        logging.info("compiled the train step in %.1fs; %.3g FLOPs/step; peak %.3g FLOP/s (%s)",
                     time.perf_counter() - t0, flops_per_step, peak, peak_src)
        state = train_loop(config, state, compiled_step, batches, ckpt, writer, evaluate,
                           flops_per_step, peak * n_peak, step)
        step = int(jax.device_get(state["step"]))

    # 7. Final evaluation and results.
    results = evaluate(step, state["params"]) if evaluators else {}
    results.update({"step": step, "config": config.get("name", "")})
    # Evaluators skipped for this model: in the log and results.md, not in results.json.
    write_results(workdir, results, config, evaluation.not_applicable(evaluators))
    writer.flush()
    ckpt.close()
    return results


def train_loop(config, state, compiled_step, batches, ckpt, writer, evaluate,
               flops_per_step: float, peak_flops: float, first_step: int):
    """Runs steps first_step..total_steps; logs, checkpoints, evaluates, stops on NaN/Inf."""
    total = config.total_steps
    local_batch = config.batch_size // jax.process_count()
    log_every, eval_every = config.log_every_steps, config.get("eval_every_steps", 0)
    last_log_time, last_log_step = time.perf_counter(), first_step
    prev = None  # (step, metrics) of the previous step: checked one step late, so no stall

    def check_finite(s, metrics):
        loss = float(jax.device_get(metrics["loss"]))
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {s}; stopping. Last good checkpoint: step "
                f"{ckpt.latest_step()} in {os.path.dirname(str(ckpt._mngr.directory))}")

    for step in range(first_step + 1, total + 1):
        batch = next(batches)
        state, metrics = compiled_step(state, batch)
        if prev is not None:
            check_finite(*prev)
        prev = (step, metrics)

        if step % log_every == 0 or step == total:
            check_finite(step, metrics)
            now = time.perf_counter()
            dt, ds = now - last_log_time, step - last_log_step
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            scalars.update({
                "steps_per_sec": ds / dt,
                "examples_per_sec": ds * config.batch_size / dt,
                "mfu": flops_per_step * ds / dt / peak_flops,
                "eta_minutes": (total - step) * dt / ds / 60,
            })
            if hasattr(batches, "metrics"):
                scalars.update(batches.metrics())  # data/skipped: broken examples dropped
            writer.write_scalars(step, scalars)
            last_log_time, last_log_step = now, step
        if step == total or (ckpt.every_steps and step % ckpt.every_steps == 0):
            check_finite(step, metrics)  # never write a NaN state
            ckpt.maybe_save(step, state, {"step": step, "examples_per_process": step * local_batch,
                                          "config": config.get("name", "")}, force=step == total)
        if eval_every and step % eval_every == 0 and step != total:
            evaluate(step, state["params"])
    ckpt.wait()
    return state
