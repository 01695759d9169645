"""Optimizer: AdamW with warm-up + cosine decay, global-norm clipping, and weight decay on
matrices only (never on biases, norms, embeddings, position embeddings, tokens or temperature).
"""
import logging

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `cfg.lr` over `cfg.warmup_steps`, then cosine decay to
    `cfg.lr * cfg.min_lr_ratio` at `total_steps`."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if warmup < cfg.warmup_steps:
        # Happens with a shortened run (--config.total_steps=100 of the demo's 160 warm-up
        # steps): the learning rate would then never decay, which a log should say.
        logging.warning("config.optimizer.warmup_steps=%d is not below total_steps=%d: the "
                        "warm-up is cut to %d steps and the run ends at the peak learning rate "
                        "with no decay; set --config.optimizer.warmup_steps to a fraction of "
                        "total_steps", cfg.warmup_steps, total_steps, warmup)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.get("min_lr_ratio", 0.0))


def weight_decay_mask(params) -> dict:
    """True for Dense/Conv kernels (`kernel` leaves); False for everything else."""
    def is_kernel(path, _):
        last = path[-1]
        return getattr(last, "key", None) == "kernel"
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """Returns (optax transformation, learning-rate schedule)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.get("clip_grad_norm"):
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=weight_decay_mask))
    return optax.chain(*parts), schedule
