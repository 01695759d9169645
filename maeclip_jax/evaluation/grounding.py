"""Visual grounding: where in the image does the model find a prompt?

Two maps per (image, prompt), both on the patch grid:
- GradCAM of the image-text similarity s = <image embedding, prompt embedding> with respect to
  the output tokens A `[T, W]` of the image tower's last transformer block. weighting='channel'
  (default, the classic form): cam_t = relu(sum_c mean_t'(ds/dA_t'c) * A_tc).
  weighting='token': cam_t = relu(sum_c ds/dA_tc * A_tc), each token by its own gradient; this
  vanishes identically when a LayerNorm follows the block (as the ViT's final norm does: a
  scale-invariant function has zero derivative along its input), so use it only with `layer`
  set to a block whose output feeds the score without a per-token norm. The activation is reached with
  flax.linen.intercept_methods (a zero perturbation added to that block's output; the gradient
  wrt the perturbation is ds/dA), so any model with `encode_image` / `encode_text` works; the
  block is the last module called under encode_image whose name starts with 'block', or
  `config.evals.<name>.layer` ('image_encoder/encoder/block2').
- Zero-shot segmentation: cosine similarity of each projected patch token (the model's
  `image_projection` applied per token) to the prompt embedding, min-max normalised per image
  and thresholded at `threshold`.

On built-in training-style scenes (seeded apart from training) each object gives a prompt
"a <colour> <shape>"; its true mask is the union of the objects matching it. Metrics:
pointing-game top-1 / top-5 (does one of the k highest GradCAM patches contain a pixel of the
object; cells tied at the k-th place count as a uniformly random pick among them, see
`pointing_hits`), two chance levels: uniformly random patches (`pointing_chance_top*`) and the
same maps scored against other images' objects (`pointing_shuffled_top*`, the fair one for
k > 1: a smooth map's top cells are neighbours), and the mean IoU of the zero-shot masks.
PNG overlays (image | GradCAM | zero-shot mask | true mask) go to <workdir>/grounding/.
"""
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maeclip_jax import evaluation, models
from maeclip_jax.evaluation import common
from maeclip_jax.train_step import normalize_images


def module_calls(model, params, images) -> list:
    """Paths (tuples of names) of every module called by encode_image, in call order."""
    paths = []

    def icpt(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            paths.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)
    with nn.intercept_methods(icpt):
        jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode_image"),
                       params, images)
    return paths


def last_block(model, params, images) -> tuple:
    blocks = [p for p in module_calls(model, params, images) if p and p[-1].startswith("block")]
    if not blocks:
        raise ValueError("grounding: encode_image calls no module named 'block*'; set "
                         "config.evals.<name>.layer to the path of the last image block")
    return blocks[-1]


def gradcam(model, params, images: jax.Array, text_emb: jax.Array, layer: Sequence[str],
            act_shape: tuple, weighting: str = "channel") -> tuple:
    """GradCAM of s_b = <image_emb_b, text_emb_b> wrt the output of module `layer`.

    Args:
      images: `[B, H, W, 3]` normalised; text_emb: `[B, D]`; act_shape: that output's shape.
    Returns:
      (cam `[B, T]` >= 0, the image tower's output tokens `[B, T', W]`).
    """
    layer = tuple(layer)

    def score(delta):
        acts = []

        def icpt(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == layer:
                acts.append(out)
                out = out + delta
            return out
        with nn.intercept_methods(icpt):
            enc = model.apply({"params": params}, images, method="encode_image")
        # Examples are independent, so the gradient of the sum is each example's own gradient.
        return jnp.sum(enc["embedding"] * text_emb), (acts[0], enc["tokens"])

    grad, (act, tokens) = jax.grad(score, has_aux=True)(jnp.zeros(act_shape, jnp.float32))
    if weighting == "channel":
        grad = grad.mean(axis=1, keepdims=True)  # [B, 1, W]: one importance per channel
    elif weighting != "token":
        raise ValueError(f"gradcam weighting={weighting!r}: expected 'token' or 'channel'")
    cam = jax.nn.relu(jnp.sum(grad * act, axis=-1))
    return cam, tokens


def pointing_hits(maps: np.ndarray, masks: np.ndarray, k: int) -> np.ndarray:
    """Pointing game with fair ties: the probability that the k highest cells of each map
    include a cell holding an object pixel, when cells tied at the k-th highest score are
    chosen uniformly at random (exact, combinatorial).

    GradCAM maps are ReLU'd, so many cells are exactly 0: breaking such ties by position would
    put the 'peaks' of a flat map on the first patches. Here a map that is flat across the k-th
    boundary scores what a random pick among the tied cells would on average (an all-flat map
    scores exactly the chance level, `pointing_chance`).

    Args:
      maps: `[Q, gh, gw]` scores on the patch grid; masks: `bool [Q, H, W]` true object masks
        (H, W multiples of gh, gw).
    Returns: float `[Q]` in [0, 1]: 1.0 / 0.0 where no tie crosses the k-th place.
    """
    q, gh, gw = maps.shape
    n = gh * gw
    k = min(k, n)
    cells = patch_coverage(masks, gh, gw) > 0  # [Q, gh * gw]
    # Scores within 1e-5 of the map's range of each other are ties, so that float noise of a
    # different device layout (1 vs 8 devices) can't reorder near-equal cells.
    flat = maps.reshape(q, -1).astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    flat = np.round((flat - lo) / np.maximum(hi - lo, 1e-30), 5)
    kth = -np.sort(-flat, axis=1)[:, k - 1:k]  # [Q, 1] the k-th highest score
    above, tied = flat > kth, flat == kth
    free = k - above.sum(1)  # places left for the tied cells (>= 1)
    m, h = tied.sum(1), (tied & cells).sum(1)  # tied cells, tied cells on the object
    sure = (above & cells).any(1)
    # P(some of `free` cells drawn from m without replacement is one of the h hits).
    p_tie = np.array([1.0 - math.comb(int(mi - hi_), int(f)) / math.comb(int(mi), int(f))
                      for mi, hi_, f in zip(m, h, free)])
    return np.where(sure, 1.0, p_tie)


def patch_coverage(masks: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """`bool [Q, H, W]` -> fraction of each patch's pixels inside the mask, `[Q, gh * gw]`."""
    q, h, w = masks.shape
    return masks.reshape(q, gh, h // gh, gw, w // gw).mean((2, 4)).reshape(q, gh * gw)


def pointing_chance(masks: np.ndarray, gh: int, gw: int, k: int) -> np.ndarray:
    """Probability that k distinct uniformly random patches hit the object, `[Q]`."""
    n = gh * gw
    hit = (patch_coverage(masks, gh, gw) > 0).sum(1)
    return np.array([1.0 - math.comb(n - h, k) / math.comb(n, k) for h in hit])


def pointing_shuffled(maps: np.ndarray, masks: np.ndarray, image: np.ndarray, k: int,
                      num_shifts: int = 16) -> float:
    """A chance level that keeps each map's own spatial structure: the pointing game of every
    map against the true masks of queries on other images (`num_shifts` evenly spaced cyclic
    shifts of the query order; pairs on the same image left out).

    `pointing_chance` assumes k independent random cells, but the k highest cells of a smooth
    map are neighbours (if the peak misses, its neighbours mostly miss too), so for k > 1 it
    overstates what a map that knows nothing about the object scores.
    """
    q = len(maps)
    hits, count = 0.0, 0
    for j in range(1, num_shifts + 1):
        shift = round(j * q / (num_shifts + 1))
        if shift % q == 0:
            continue
        other = np.roll(np.arange(q), shift)
        keep = image[other] != image
        if keep.any():
            hits += pointing_hits(maps[keep], masks[other[keep]], k).sum()
            count += int(keep.sum())
    return hits / count if count else float("nan")


def iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-mask intersection over union of `bool [Q, H, W]` masks (1.0 when both are empty)."""
    inter = np.logical_and(pred, true).sum((1, 2))
    union = np.logical_or(pred, true).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def upsample(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour `[Q, gh, gw]` -> `[Q, H, W]`."""
    q, gh, gw = maps.shape
    return np.repeat(np.repeat(maps, h // gh, axis=1), w // gw, axis=2)


def threshold_maps(maps: np.ndarray, threshold: float) -> np.ndarray:
    """Min-max normalise each `[gh, gw]` map, keep cells above `threshold`."""
    lo = maps.min((1, 2), keepdims=True)
    hi = maps.max((1, 2), keepdims=True)
    return (maps - lo) / np.maximum(hi - lo, 1e-12) > threshold


def grounding_queries(scene: dict) -> dict:
    """One query per distinct (colour, shape) in each scene: prompt, image index, true mask."""
    from maeclip_jax.data import builtin
    prompts, index, masks = [], [], []
    for i in range(len(scene["image"])):
        done = set()
        for k in range(int(scene["num_objects"][i])):
            key = (int(scene["colour"][i, k]), int(scene["shape"][i, k]))
            if key in done:
                continue
            done.add(key)
            same = (scene["colour"][i] == key[0]) & (scene["shape"][i] == key[1])
            prompts.append(f"a {builtin.COLOUR_NAMES[key[0]]} {builtin.SHAPES[key[1]]}")
            index.append(i)
            masks.append(scene["masks"][i][same].any(0))
    return {"prompt": prompts, "index": np.array(index), "mask": np.stack(masks)}


def picture_queries(index: np.ndarray, num_objects: np.ndarray, n: int) -> list:
    """Which `n` queries to draw: scenes with the most objects first (a map must then pick the
    named object among distractors), at most one per group of built-in scenes that differ only
    in shape (`builtin.HARD_NEGATIVE_GROUP`) while there are other groups, in query order."""
    from maeclip_jax.data import builtin
    order = sorted(range(len(index)), key=lambda j: (-int(num_objects[index[j]]), j))
    groups, chosen = set(), []
    for j in order:
        g = int(index[j]) // builtin.HARD_NEGATIVE_GROUP
        if g not in groups:
            groups.add(g)
            chosen.append(j)
    chosen += [j for j in order if j not in chosen]
    return sorted(chosen[:n], key=lambda j: (-int(num_objects[index[j]]), j))


def _heat(x: np.ndarray) -> np.ndarray:
    """`[H, W]` in [0, 1] -> `uint8 [H, W, 3]` blue-green-red colour map."""
    x = x[..., None]
    rgb = np.concatenate([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def overlay_picture(image: np.ndarray, cam: np.ndarray, seg: np.ndarray, true: np.ndarray,
                    scale: int = 4) -> np.ndarray:
    """`uint8 [H, 4 W, 3]` (upscaled): image | GradCAM overlay | zero-shot mask | true mask."""
    img = image.astype(np.float32)
    c = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
    panels = [img, 0.5 * img + 0.5 * _heat(c),
              np.where(seg[..., None], 0.4 * img + 0.6 * np.array([255, 255, 255]), 0.4 * img),
              np.where(true[..., None], 0.4 * img + 0.6 * np.array([255, 255, 255]), 0.4 * img)]
    out = np.concatenate(panels, axis=1).astype(np.uint8)
    return np.repeat(np.repeat(out, scale, 0), scale, 1)


def save_png(path: str, array: np.ndarray) -> None:
    """Writes a PNG through tf.io.gfile (local paths and gs:// alike)."""
    import io
    import tensorflow as tf
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


@evaluation.register("grounding")
class Grounding:
    """Config: num_images (scenes; ~2 prompts each), batch_size, threshold (0.5), layer
    (optional path), weighting ('channel' | 'token'), num_pictures (PNG overlays written
    to <workdir>/grounding/, 0 = none)."""

    requires = ("image_embedding", "text_embedding")

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        self.workdir = None

    def maps(self, params, images: np.ndarray, prompts: Sequence[str]) -> dict:
        """uint8 images `[Q, H, W, 3]` and one prompt each -> cam, sim `[Q, gh, gw]`."""
        model, config = self.model, self.config
        s = config.input.image_size
        x0 = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
        layer = (tuple(self.cfg.layer.split("/")) if self.cfg.get("layer")
                 else last_block(model, params, x0))

        def make():
            def fn(params, batch):
                imgs = normalize_images(batch["image"], config)
                txt = model.apply({"params": params}, batch["text"],
                                  method="encode_text")["embedding"]
                txt = jax.lax.stop_gradient(txt)
                act = self._act_shape(params, imgs.shape, layer)
                cam, tokens = gradcam(model, params, imgs, txt, layer, act,
                                      common.field(self.cfg, "weighting", "channel"))
                proj = model.apply({"params": params}, tokens,
                                   method=lambda m, t: m.image_projection(t)).astype(jnp.float32)
                proj = proj / jnp.linalg.norm(proj, axis=-1, keepdims=True)
                return {"cam": cam, "sim": jnp.einsum("btd,bd->bt", proj, txt)}
            return fn
        fn = common.cached_fn(f"grounding:{self.name}", model, config, make)
        out = common.batched_apply(fn, {"image": images,
                                        "text": self.tokenizer.tokenize_numpy(prompts)},
                                   self.cfg.get("batch_size", 128), self.mesh, params)
        g = s // models.tower_kwargs(config.model.image)["patch_size"]
        n = g * g
        # With a class token the tower's outputs hold it first: keep the patch tokens.
        return {k: v[:, -n:].reshape(-1, g, g) for k, v in out.items()}

    def _act_shape(self, params, image_shape, layer) -> tuple:
        shapes = []

        def icpt(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == layer:
                shapes.append(out.shape)
            return out
        with nn.intercept_methods(icpt):
            jax.eval_shape(lambda p, x: self.model.apply({"params": p}, x, method="encode_image"),
                           params, jax.ShapeDtypeStruct(image_shape, jnp.float32))
        if not shapes:
            raise ValueError(f"config.evals.{self.name}.layer={'/'.join(layer)!r}: no such "
                             "module is called by encode_image")
        return shapes[0]

    def run(self, params) -> dict:
        size = self.config.input.image_size
        scene = common.builtin_scenes(self.config.seed, self.cfg.get("num_images", 128), size,
                                      offset=1)
        q = grounding_queries(scene)
        images = scene["image"][q["index"]]
        m = self.maps(params, images, q["prompt"])
        gh, gw = m["cam"].shape[1:]
        seg = upsample(threshold_maps(m["sim"], self.cfg.get("threshold", 0.5)), size, size)
        res = {"pointing_top1": pointing_hits(m["cam"], q["mask"], 1).mean(),
               "pointing_top5": pointing_hits(m["cam"], q["mask"], 5).mean(),
               "pointing_chance_top1": pointing_chance(q["mask"], gh, gw, 1).mean(),
               "pointing_chance_top5": pointing_chance(q["mask"], gh, gw, 5).mean(),
               "pointing_shuffled_top1": pointing_shuffled(m["cam"], q["mask"], q["index"], 1),
               "pointing_shuffled_top5": pointing_shuffled(m["cam"], q["mask"], q["index"], 5),
               "sim_pointing_top1": pointing_hits(m["sim"], q["mask"], 1).mean(),
               "seg_miou": iou(seg, q["mask"]).mean()}
        n_pic = self.cfg.get("num_pictures", 4)
        if self.workdir and n_pic and jax.process_index() == 0:
            import tensorflow as tf
            out_dir = os.path.join(self.workdir, "grounding")
            tf.io.gfile.makedirs(out_dir)
            for j in picture_queries(q["index"], scene["num_objects"], n_pic):
                cam = upsample(m["cam"][j:j + 1], size, size)[0]
                pic = overlay_picture(images[j], cam, seg[j], q["mask"][j])
                save_png(os.path.join(out_dir, f"{j:02d}_{q['prompt'][j].replace(' ', '_')}.png"),
                         pic)
        return {f"{self.name}/{k}": float(v) for k, v in res.items()}
