"""Linear probe on frozen, pooled image features, two protocols (`config.evals.<name>.protocol`):

- 'ridge' (default, for frequent monitoring): closed-form ridge regression onto one-hot targets
  (as big_vision's fast probe); `shots` > 0 fits on that many examples per class (few-shot).
- 'logistic' (the reported protocol): multinomial logistic regression on all training features,
  L-BFGS on the exact objective of scikit-learn's LogisticRegression
  (C * sum cross-entropy + 0.5 ||W||^2, bias unpenalised).

Both choose their regularisation on a held-out part of the training examples, refit on all of
them, and score on disjoint test examples. Features are standardised with training statistics.
"""
from typing import Sequence, Tuple

import numpy as np
import scipy.optimize

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


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, c: float,
                 max_iter: int = 1000, init: Tuple[np.ndarray, np.ndarray] = None,
                 gtol: float = 1e-5) -> Tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, minimising C * sum_i CE(x_i W + b, y_i) + 0.5 ||W||^2.

    L-BFGS on that objective divided by C * N (same minimiser, gradients of order one, as
    scikit-learn scales it), optionally warm-started from `init`.

    Args:
      x: `[N, W]` features; y: `[N]` int labels; c: inverse regularisation strength (sklearn C).
    Returns:
      (weights `[W, C]`, bias `[C]`).
    """
    x = x.astype(np.float64)
    n, d = x.shape
    onehot = np.eye(num_classes)[y]
    reg = 1.0 / (c * n)

    def loss_grad(theta):
        w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
        z = x @ w + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -np.sum(onehot * logp) / n + 0.5 * reg * np.sum(w * w)
        g = (np.exp(logp) - onehot) / n  # dL/dz, [N, C]
        return loss, np.concatenate([(x.T @ g + reg * w).ravel(), g.sum(0)])

    theta0 = (np.zeros(d * num_classes + num_classes) if init is None else
              np.concatenate([init[0].ravel(), init[1]]))
    res = scipy.optimize.minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter, "gtol": gtol})
    return res.x[:d * num_classes].reshape(d, num_classes), res.x[d * num_classes:]


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, num_classes: int,
                   c_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                   val_fraction: float = 0.2) -> dict:
    """Chooses C on a held-out slice of the training examples, refits on all of them, returns
    top-1 on the test set (and the chosen C, and the held-out accuracy)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    n_val = max(1, int(len(train_x) * val_fraction))
    best_c, best_acc, prev = c_grid[0], -1.0, None
    for c in sorted(c_grid):  # strongest regularisation first, each fit warm-starts the next
        w, b = prev = fit_logistic(train_x[n_val:], train_y[n_val:], num_classes, c, init=prev)
        acc = float(np.mean(np.argmax(train_x[:n_val] @ w + b, 1) == train_y[:n_val]))
        if acc > best_acc:
            best_c, best_acc = c, acc
    w, b = fit_logistic(train_x, train_y, num_classes, best_c)
    top1 = float(np.mean(np.argmax(test_x @ w + b, 1) == test_y))
    return {"top1": top1, "C": best_c, "val_top1": best_acc}


def few_shot_indices(y: np.ndarray, shots: int) -> np.ndarray:
    """The first `shots` examples of every class, in their original order."""
    keep = np.concatenate([np.flatnonzero(y == c)[:shots] for c in np.unique(y)])
    return np.sort(keep)


@evaluation.register("linear_probe")
class LinearProbe:
    """Config (fields read; '' / () / 0 mean unset where noted):

    - dataset: 'builtin' (default: the built-in eval split, 24 colour x shape classes,
      `num_examples` of it split half/half into fit and test) or 'tfds:NAME' (any TFDS image
      classification dataset, e.g. 'tfds:imagenet2012', 'tfds:cifar10'; never downloaded).
    - TFDS only: train_split (fit split, default 'train', e.g. 'train[:10000]'), test_split
      (default 'validation' where the dataset has one, else 'test'), data_dir, image_key
      ('image'), label_key ('label'), num_train_examples / num_test_examples (caps; 0 = the
      whole split). Images: shorter side resized to config.input.image_size, centre crop.
    - protocol ('ridge' | 'logistic'), shots (ridge only; 0 = all fit examples), feature
      ('pooled'), c_grid / l2_grid (() = the defaults), batch_size.
    """

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model, self.mesh = name, cfg, config, model, mesh
        self.kind, self.dataset = common.dataset_kind(cfg, name, ("builtin", "tfds"))
        self.protocol = common.field(cfg, "protocol", "ridge")
        if self.protocol not in ("ridge", "logistic"):
            raise ValueError(f"config.evals.{name}.protocol={self.protocol!r}: expected 'ridge' "
                             "or 'logistic'")
        if common.field(cfg, "shots", 0) and self.protocol != "ridge":
            raise ValueError(f"config.evals.{name}.shots: few-shot is for the ridge protocol")
        if self.kind == "tfds":
            # Fail now (before any training) if the dataset or a split is not there.
            data_dir = common.field(cfg, "data_dir", "")
            self.builder = common.tfds_builder(name, self.dataset, data_dir)
            self.train_split = common.field(cfg, "train_split", "train")
            self.test_split = common.field(cfg, "test_split",
                                            common.default_test_split(self.builder))
            for f, split in (("train_split", self.train_split), ("test_split", self.test_split)):
                common.tfds_split(self.builder, name, f, split, data_dir)
            label_key = common.field(cfg, "label_key", "label")
            feat = common.tfds_class_feature(self.builder, name, label_key)
            self.num_classes = feat.num_classes if feat is not None else None

    def _tfds_features(self, params, split_field: str, split: str, cap: int):
        cfg = self.cfg
        bs = common.field(cfg, "batch_size", 256)
        ds = common.tfds_split(self.builder, self.name, split_field, split,
                               common.field(cfg, "data_dir", ""))
        chunks = common.tfds_image_label_chunks(
            ds, self.name, common.field(cfg, "image_key", "image"),
            common.field(cfg, "label_key", "label"), self.config.input.image_size,
            cap, 16 * bs)
        feature = common.field(cfg, "feature", "pooled")
        feats, y = common.features_of_chunks(self.model, params, chunks, self.config, bs,
                                             self.mesh, (feature,))
        return feats[feature], y

    def data(self, params):
        """(fit_x, fit_y, test_x, test_y, num_classes)."""
        from maeclip_jax.data import builtin
        if self.kind == "tfds":
            fit_x, fit_y = self._tfds_features(
                params, "train_split", self.train_split,
                int(common.field(self.cfg, "num_train_examples", 0)))
            test_x, test_y = self._tfds_features(
                params, "test_split", self.test_split,
                int(common.field(self.cfg, "num_test_examples", 0)))
            n = self.num_classes or int(max(fit_y.max(), test_y.max())) + 1
            return fit_x, fit_y, test_x, test_y, n
        data = common.builtin_eval_split(self.config.seed, self.cfg.num_examples,
                                         self.config.input.image_size)
        feats = common.image_features(self.model, params, data["image"], self.config,
                                      common.field(self.cfg, "batch_size", 256), self.mesh)
        x = feats[common.field(self.cfg, "feature", "pooled")]
        y = data["label"]
        half = len(x) // 2
        return x[:half], y[:half], x[half:], y[half:], builtin.NUM_CLASSES

    def run(self, params) -> dict:
        fit_x, fit_y, test_x, test_y, num_classes = self.data(params)
        if self.protocol == "logistic":
            grid = common.field(self.cfg, "c_grid", None)
            kw = {"c_grid": tuple(grid)} if grid else {}
            res = logistic_probe(fit_x, fit_y, test_x, test_y, num_classes, **kw)
        else:
            shots = common.field(self.cfg, "shots", 0)
            if shots:
                keep = few_shot_indices(fit_y, shots)
                fit_x, fit_y = fit_x[keep], fit_y[keep]
            grid = common.field(self.cfg, "l2_grid", None)
            kw = {"l2_grid": tuple(grid)} if grid else {}
            res = ridge_probe(fit_x, fit_y, test_x, test_y, num_classes, **kw)
        return {f"{self.name}/{k}": v for k, v in res.items()}
