"""VQA fine-tuning: a fusion head over the image tower's tokens and the text tower's question
tokens, fine-tuned together with both towers from the pre-trained parameters; top-1 answer
accuracy (overall and per question type).

Design (the head, `VQAHead`):
  image tokens `[B, T, Wi]` --Dense--> `[B, T, d]` + type embedding 0
  question tokens `[B, L, Wt]` --Dense--> `[B, L, d]` + type embedding 1 (padding masked out)
  [answer-query token; image; question] -> `depth` pre-LN transformer blocks (joint
  self-attention: every token sees both modalities) -> the query token -> LayerNorm -> Dense
  over the answer vocabulary (every answer of the training questions, sorted).
The towers run exactly as in pre-training (`encode_image` / `encode_text`), so the head works
for every model with a separate text tower (CLIP, MAE-CLIP). Models without `encode_text` are
skipped with a logged reason: MAE (image only) and M3AE (one joint encoder, no separate text
tower whose question tokens the head could read).
`freeze_towers=True` trains the head only (a probe of the frozen tokens).

Questions: the common format is one JSON object per line with `question_id`, `image`,
`question`, `answer` and optionally `type` (vqa_formats.py converts official CLEVR, VQAv2 and
GQA files to it). On the built-in data (`dataset='builtin'`) questions are generated from the
scenes' ground truth (`generate_questions`): colour, shape, count, position and existence,
CLEVR-style. Words the pinned tokenizer does not know ('what', 'how', 'where') become the
unknown token; the question types stay distinguishable by the words it does know
('... is the <unk> of the circle' vs '<unk> shape is the red object' vs '<unk> is the red
circle'). Training and test questions come from disjoint, never-trained-on scene seeds.
"""
import json
import os
from typing import List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maeclip_jax import evaluation, optim, sharding
from maeclip_jax.evaluation import common
from maeclip_jax.models import layers
from maeclip_jax.train_step import normalize_images

QUESTION_TYPES = ("existence", "count", "colour", "shape", "position")
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


def _region(cy: float, cx: float, size: int) -> str:
    """'top left', 'center', 'left', ... (the built-in captions' position words)."""
    from maeclip_jax.data import builtin
    where = builtin._where(cy, cx, size)
    for prefix in ("at the ", "on the ", "in the "):
        if where.startswith(prefix):
            return where[len(prefix):]
    return where


def generate_questions(scene: dict, seed: int, per_image: int = 3) -> List[dict]:
    """Questions with ground-truth answers about built-in scenes (`common.builtin_scenes`).

    For each image, `per_image` questions of distinct types drawn at random among those that
    are well posed for it (colour is asked of a shape that occurs once, shape of a colour that
    occurs once, position of a (colour, shape) that occurs once; existence is yes/no 50:50).
    Returns records {question_id, image (index), question, answer, type}.
    """
    from maeclip_jax.data import builtin
    rng = np.random.default_rng([seed, 11])
    size = scene["image"].shape[1]
    out = []
    for i in range(len(scene["image"])):
        n = int(scene["num_objects"][i])
        col, shp = scene["colour"][i, :n], scene["shape"][i, :n]
        cands = {}
        if rng.uniform() < 0.5:
            k = int(rng.integers(n))
            c, s, ans = col[k], shp[k], "yes"
        else:
            present = set(zip(col.tolist(), shp.tolist()))
            while True:
                c, s = int(rng.integers(len(builtin.COLOUR_NAMES))), int(rng.integers(len(builtin.SHAPES)))
                if (c, s) not in present:
                    break
            ans = "no"
        cands["existence"] = (f"is there a {builtin.COLOUR_NAMES[c]} {builtin.SHAPES[s]}", ans)
        cands["count"] = ("how many objects are in the image", _COUNT_WORDS[n])
        uniq_shape = [k for k in range(n) if np.sum(shp == shp[k]) == 1]
        if uniq_shape:
            k = uniq_shape[int(rng.integers(len(uniq_shape)))]
            cands["colour"] = (f"what is the colour of the {builtin.SHAPES[shp[k]]}",
                               builtin.COLOUR_NAMES[col[k]])
        uniq_col = [k for k in range(n) if np.sum(col == col[k]) == 1]
        if uniq_col:
            k = uniq_col[int(rng.integers(len(uniq_col)))]
            cands["shape"] = (f"what shape is the {builtin.COLOUR_NAMES[col[k]]} object",
                              builtin.SHAPES[shp[k]])
        uniq = [k for k in range(n) if np.sum((col == col[k]) & (shp == shp[k])) == 1]
        if uniq:
            k = uniq[int(rng.integers(len(uniq)))]
            ys, xs = np.nonzero(scene["masks"][i, k])
            cands["position"] = (
                f"where is the {builtin.COLOUR_NAMES[col[k]]} {builtin.SHAPES[shp[k]]}",
                _region(ys.mean() + 0.5, xs.mean() + 0.5, size))
        types = [t for t in QUESTION_TYPES if t in cands]
        for t in rng.permutation(types)[:per_image]:
            q, a = cands[str(t)]
            out.append({"question_id": len(out), "image": i, "question": q, "answer": a,
                        "type": str(t)})
    return out


def read_jsonl(path: str) -> List[dict]:
    """Questions in the common format; names the file and line of a bad record."""
    import tensorflow as tf
    out = []
    with tf.io.gfile.GFile(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            for key in ("image", "question", "answer"):
                if key not in rec:
                    raise ValueError(f"{path}:{n}: record has no {key!r} field (has {sorted(rec)})")
            out.append(rec)
    return out


class VQAHead(nn.Module):
    """Fusion + answer classification; see the module docstring.

    Attributes: num_answers, width (d), depth, num_heads, mlp_dim.
    """

    num_answers: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512

    @nn.compact
    def __call__(self, image_tokens: jax.Array, text_tokens: jax.Array,
                 text_valid: jax.Array) -> jax.Array:
        """`[B, T, Wi]`, `[B, L, Wt]`, bool `[B, L]` -> answer logits `[B, num_answers]`."""
        b = image_tokens.shape[0]
        types = self.param("type_embedding", nn.initializers.normal(0.02), (2, self.width))
        query = self.param("query", nn.initializers.normal(0.02), (1, 1, self.width))
        img = nn.Dense(self.width, name="image_in")(image_tokens) + types[0]
        txt = nn.Dense(self.width, name="text_in")(text_tokens) + types[1]
        x = jnp.concatenate([jnp.broadcast_to(query, (b, 1, self.width)), img, txt], axis=1)
        valid = jnp.concatenate([jnp.ones((b, 1 + img.shape[1]), bool), text_valid], axis=1)
        x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, name="fusion")(
            x, valid[:, None, None, :])
        return nn.Dense(self.num_answers, name="answer")(x[:, 0])


@evaluation.register("vqa")
class VQA:
    """Config: dataset ('builtin' | path of a common-format JSONL file for training, with
    `test_file` and `image_dir`), num_train_images / num_test_images / questions_per_image
    (builtin), steps, batch_size, eval_batch_size, lr, warmup_steps, weight_decay,
    freeze_towers, head (width, depth, num_heads, mlp_dim). dataset '' means 'builtin'."""

    requires = ("text_tokens",)

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        ds = common.field(cfg, "dataset", "builtin")
        if ds != "builtin":
            for key in ("test_file", "image_dir"):
                if not cfg.get(key):
                    raise ValueError(f"config.evals.{name}.{key} is needed with dataset={ds!r}")
            import tensorflow as tf
            if not tf.io.gfile.exists(ds):
                raise FileNotFoundError(f"config.evals.{name}.dataset: no file {ds!r}")

    # --- data ---

    def data(self):
        """(train, test): dicts of image `uint8 [Q, H, W, 3]`, question tokens `[Q, L]`, answer
        strings, types."""
        size, cfg = self.config.input.image_size, self.cfg
        if common.field(cfg, "dataset", "builtin") == "builtin":
            per = cfg.get("questions_per_image", 3)
            splits = []
            for off, n in ((2, cfg.get("num_train_images", 512)),
                           (3, cfg.get("num_test_images", 256))):
                scene = common.builtin_scenes(self.config.seed, n, size, offset=off)
                qs = generate_questions(scene, self.config.seed + off, per)
                splits.append((scene["image"], qs))
        else:
            splits = [self._load_images(read_jsonl(p)) for p in (cfg.dataset, cfg.test_file)]
        out = []
        for images, qs in splits:
            out.append({"image": images[np.array([q["image"] for q in qs])],
                        "question": self.tokenizer.tokenize_numpy([q["question"] for q in qs]),
                        "answer": [q["answer"] for q in qs],
                        "type": [q.get("type", "all") for q in qs]})
        return out

    def _load_images(self, qs: List[dict]):
        import tensorflow as tf
        from PIL import Image
        names = sorted({str(q["image"]) for q in qs})
        pos = {n: i for i, n in enumerate(names)}
        imgs = []
        for n in names:
            path = os.path.join(self.cfg.image_dir, n)
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"config.evals.{self.name}.image_dir: no image {path!r}")
            with tf.io.gfile.GFile(path, "rb") as f:
                img = np.asarray(Image.open(f).convert("RGB"))
            imgs.append(common.resize_center_crop(img, self.config.input.image_size).numpy())
        return np.stack(imgs), [dict(q, image=pos[str(q["image"])]) for q in qs]

    # --- model ---

    def logits_fn(self, head: VQAHead):
        model, config, freeze = self.model, self.config, self.cfg.get("freeze_towers", False)

        def fn(params, image, question):
            img = model.apply({"params": params["towers"]}, normalize_images(image, config),
                              method="encode_image")["tokens"]
            txt = model.apply({"params": params["towers"]}, question, method="encode_text")
            tt = txt["tokens"]
            valid = txt["valid"] if "valid" in txt else question != 0
            if freeze:
                img, tt = jax.lax.stop_gradient(img), jax.lax.stop_gradient(tt)
            return head.apply({"params": params["head"]}, img, tt, valid)
        return fn

    def run(self, params) -> dict:
        cfg = self.cfg
        train, test = self.data()
        answers = sorted(set(train["answer"]))
        a_id = {a: i for i, a in enumerate(answers)}
        y_train = np.array([a_id[a] for a in train["answer"]], np.int32)
        # Test answers never seen in training can't be predicted: they count as wrong.
        y_test = np.array([a_id.get(a, -1) for a in test["answer"]], np.int32)

        steps, bs = cfg.get("steps", 300), cfg.get("batch_size", 64)
        dp = sharding.data_parallel_size(self.mesh)
        bs = max(dp, bs // dp * dp)
        fns = self._functions(len(answers), steps, params)
        p = {"towers": params, "head": fns["init_head"]()}
        opt_state = fns["init_opt"](p)
        step, batch_sh = fns["step"], sharding.batch_sharding(self.mesh)

        # Same order on every host and for any device count: a numpy permutation stream.
        rng = np.random.default_rng([self.config.seed, 13])
        order = np.concatenate([rng.permutation(len(y_train))
                                for _ in range(steps * bs // len(y_train) + 1)])
        arrays = {"image": train["image"], "question": train["question"], "answer": y_train}
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs]
            chunk = {k: v[idx] for k, v in arrays.items()}
            batch = {k: jax.make_array_from_callback(v.shape, batch_sh, lambda i, v=v: v[i])
                     for k, v in chunk.items()}
            p, opt_state, loss = step(p, opt_state, batch)
        final_loss = float(jax.device_get(loss))

        pred = common.batched_apply(
            fns["predict"], {"image": test["image"], "question": test["question"]},
            cfg.get("eval_batch_size", 256), self.mesh, p)
        correct = pred == y_test
        types = np.array(test["type"])
        res = {"top1": float(correct.mean()), "train_loss": final_loss,
               "prior_top1": float(np.mean(prior_predictions(train, test) == np.array(test["answer"])))}
        for t in sorted(set(types)):
            res[f"top1_{t}"] = float(correct[types == t].mean())
        return {f"{self.name}/{k}": v for k, v in res.items()}

    def _functions(self, num_answers: int, steps: int, params) -> dict:
        """The jitted init / step / predict functions, built once per answer-vocabulary size so
        that evaluations during training reuse their compilations."""
        key = (num_answers, steps)
        cache = self.__dict__.setdefault("_fns", {})
        if key in cache:
            return cache[key]
        cfg = self.cfg
        hcfg = dict(width=128, depth=2, num_heads=4, mlp_dim=512)
        hcfg.update(cfg.get("head", {}) or {})
        head = VQAHead(num_answers=num_answers, **hcfg)
        logits_fn = self.logits_fn(head)
        ocfg = ml_collections.ConfigDict(dict(
            lr=cfg.get("lr", 3e-4), warmup_steps=cfg.get("warmup_steps", 30), min_lr_ratio=0.0,
            b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.get("weight_decay", 1e-4),
            clip_grad_norm=1.0))
        tx, _ = optim.make_optimizer(ocfg, steps)
        repl, batch_sh = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        img_shape, txt_shape = self._img_tokens_shape(params), self._txt_tokens_shape(params)

        def init_head():
            return head.init(jax.random.PRNGKey(self.config.seed + 5),
                             jnp.zeros((1,) + img_shape[1:]), jnp.zeros((1,) + txt_shape[1:]),
                             jnp.ones((1, txt_shape[1]), bool))["params"]

        def step(p, opt_state, batch):
            def loss_fn(p):
                logits = logits_fn(p, batch["image"], batch["question"])
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits.astype(jnp.float32), batch["answer"]).mean()
            loss, g = jax.value_and_grad(loss_fn)(p)
            upd, opt_state = tx.update(g, opt_state, p)
            return optax.apply_updates(p, upd), opt_state, loss

        def predict(p, b):
            return jnp.argmax(logits_fn(p, b["image"], b["question"]), -1)
        cache[key] = {
            "init_head": jax.jit(init_head, out_shardings=repl),
            # Tower parameters (and so their Adam moments) keep the training state's sharding
            # (FSDP / tensor parallel), read off the committed arrays; the head is replicated.
            "init_opt": jax.jit(tx.init),
            # Not donated: p holds the caller's (training state's) tower parameters.
            "step": jax.jit(step, in_shardings=(None, None, batch_sh),
                            out_shardings=(None, None, repl)),
            "predict": predict}
        return cache[key]

    def _img_tokens_shape(self, params):
        s = self.config.input.image_size
        return jax.eval_shape(lambda p, x: self.model.apply({"params": p}, x, method="encode_image"),
                              params, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))["tokens"].shape

    def _txt_tokens_shape(self, params):
        L = self.config.input.max_text_len
        return jax.eval_shape(lambda p, x: self.model.apply({"params": p}, x, method="encode_text"),
                              params, jax.ShapeDtypeStruct((1, L), jnp.int32))["tokens"].shape


def prior_predictions(train: dict, test: dict) -> np.ndarray:
    """The most frequent training answer of each question type (a blind baseline)."""
    best = {}
    for t in set(train["type"]):
        ans = [a for a, tt in zip(train["answer"], train["type"]) if tt == t]
        vals, counts = np.unique(ans, return_counts=True)
        best[t] = vals[np.argmax(counts)]
    return np.array([best.get(t, "") for t in test["type"]])
