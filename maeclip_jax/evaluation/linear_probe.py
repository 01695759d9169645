"""Linear probe on frozen, pooled image features: closed-form ridge regression onto one-hot
targets (as big_vision's fast probe), with the L2 strength chosen on a held-out part of the fit
examples, then refit on all of them and scored on disjoint test examples."""
from typing import Sequence, Tuple

import numpy as np

from maeclip_jax import evaluation
from maeclip_jax.evaluation import common


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> Tuple[np.ndarray, np.ndarray]:
    """Least squares onto centred one-hot targets with an L2 penalty (bias unpenalised).

    Args:
      x: `[N, W]` features; y: `[N]` int labels.
    Returns:
      (weights `[W, C]`, bias `[C]`).
    """
    x = x.astype(np.float64)
    mean = x.mean(0)
    xc = x - mean
    t = np.eye(num_classes)[y] * 2.0 - 1.0
    tmean = t.mean(0)
    a = xc.T @ xc + l2 * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(a, xc.T @ (t - tmean))
    return w, tmean - mean @ w


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, num_classes: int,
                l2_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                val_fraction: float = 0.2) -> dict:
    """Chooses l2 on a held-out slice of the training examples; returns top-1 on the test set."""
    # Standardise with training statistics only, so l2 means the same for every model.
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    n_val = max(1, int(len(train_x) * val_fraction))
    best_l2, best_acc = l2_grid[0], -1.0
    for l2 in l2_grid:
        w, b = fit_ridge(train_x[n_val:], train_y[n_val:], num_classes, l2)
        acc = float(np.mean(np.argmax(train_x[:n_val] @ w + b, 1) == train_y[:n_val]))
        if acc > best_acc:
            best_l2, best_acc = l2, acc
    w, b = fit_ridge(train_x, train_y, num_classes, best_l2)
    top1 = float(np.mean(np.argmax(test_x @ w + b, 1) == test_y))
    return {"top1": top1, "l2": best_l2, "val_top1": best_acc}


@evaluation.register("linear_probe")
class LinearProbe:
    """Config: num_examples (split half/half into fit and test), batch_size, dataset
    ('builtin'), feature ('pooled')."""

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model, self.mesh = name, cfg, config, model, mesh
        if cfg.get("dataset", "builtin") != "builtin":
            raise ValueError(f"config.evals.{name}.dataset={cfg.dataset!r}: only 'builtin' so far")

    def run(self, params) -> dict:
        from maeclip_jax.data import builtin
        data = common.builtin_eval_split(self.config.seed, self.cfg.num_examples,
                                         self.config.input.image_size)
        feats = common.image_features(self.model, params, data["image"], self.config,
                                      self.cfg.get("batch_size", 256), self.mesh)
        x = feats[self.cfg.get("feature", "pooled")]
        y = data["label"]
        half = len(x) // 2
        res = ridge_probe(x[:half], y[:half], x[half:], y[half:], builtin.NUM_CLASSES)
        return {f"{self.name}/{k}": v for k, v in res.items()}
