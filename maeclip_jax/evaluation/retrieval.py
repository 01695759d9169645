"""Image-text retrieval: image->text and text->image recall@1/5/10 with several captions per
image.

Datasets (`config.evals.<name>.dataset`):
- 'builtin': training-style scenes (1-3 objects) from a seed no training run uses
  (common.builtin_scenes), each with `captions_per_image` captions written from the scene's
  ground truth (the generator's caption plus re-wordings: other prefixes, other object orders,
  with and without positions).
- 'tfds:NAME' (e.g. 'tfds:coco_captions', split from `split`, default 'val'): images with
  `captions/text` as TFDS coco_captions stores them; read from `data_dir` with download=False.

Ties count against the model (an item scoring the same as the correct one ranks above it), so a
constant model gets chance-level recall, not 100%.
"""
from typing import Sequence

import numpy as np

from maeclip_jax import evaluation
from maeclip_jax.evaluation import common


def recall_at_k(sim: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k both ways.

    Args:
      sim: `[N_images, N_texts]` similarities.
      text_to_image: `[N_texts]` index of the image each text describes.
    Returns:
      {'i2t_r@k': fraction of images whose best-ranked correct text is in the top k,
       't2i_r@k': fraction of texts whose image is in the top k}.
    """
    n_img, n_txt = sim.shape
    correct = text_to_image[None, :] == np.arange(n_img)[:, None]  # [N_img, N_txt]
    # image -> text: rank of the best correct text = number of wrong texts scoring >= it.
    best = np.where(correct, sim, -np.inf).max(1, keepdims=True)
    i2t_rank = np.sum((sim >= best) & ~correct, axis=1)
    # text -> image: number of other images scoring >= the correct one.
    own = sim[text_to_image, np.arange(n_txt)][None, :]
    t2i_rank = np.sum((sim >= own) & ~correct, axis=0)
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(np.mean(i2t_rank < k))
        out[f"t2i_r@{k}"] = float(np.mean(t2i_rank < k))
    return out


def scene_captions(scene: dict, i: int, n: int, image_size: int, rng: np.random.Generator) -> list:
    """`n` different captions of scene i (the generator's own first), from its ground truth."""
    from maeclip_jax.data import builtin
    objs = []
    for k in range(int(scene["num_objects"][i])):
        ys, xs = np.nonzero(scene["masks"][i, k])
        noun = (f"{builtin.SIZE_NAMES[scene['size'][i, k]]} "
                f"{builtin.COLOUR_NAMES[scene['colour'][i, k]]} "
                f"{builtin.SHAPES[scene['shape'][i, k]]}")
        objs.append((noun, builtin._where(ys.mean() + 0.5, xs.mean() + 0.5, image_size)))
    caps = [scene["text"][i].decode()]
    seen = set(caps)
    for _ in range(200):
        if len(caps) == n:
            break
        order = rng.permutation(len(objs))
        with_pos = rng.uniform() < 0.7
        phrases = [f"a {objs[j][0]}" + (f" {objs[j][1]}" if with_pos else "") for j in order]
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        cap = builtin._PREFIXES[int(rng.integers(len(builtin._PREFIXES)))] + body
        if cap not in seen:
            seen.add(cap)
            caps.append(cap)
    while len(caps) < n:  # a single small object has few wordings: repeat (still a true caption)
        caps.append(caps[len(caps) % max(1, len(seen))])
    return caps


def builtin_retrieval_set(seed: int, num_images: int, captions_per_image: int,
                          image_size: int) -> dict:
    scene = common.builtin_scenes(seed, num_images, image_size)
    rng = np.random.default_rng([seed, 7])
    texts = [c for i in range(num_images)
             for c in scene_captions(scene, i, captions_per_image, image_size, rng)]
    return {"image": scene["image"], "texts": texts,
            "text_to_image": np.repeat(np.arange(num_images), captions_per_image)}


def tfds_retrieval_set(name: str, split: str, num_images: int, image_size: int,
                       data_dir: str = None) -> dict:
    """Images (resized shorter side + centre crop) and all their captions from a TFDS captioning
    dataset with features image and captions/text (coco_captions)."""
    import tensorflow_datasets as tfds
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 (re-raised with the config field named)
        raise FileNotFoundError(f"config.evals.*.dataset='tfds:{name}' split {split!r}: not "
                                f"prepared in data_dir={data_dir!r} ({e})") from e
    images, texts, t2i = [], [], []
    for i, ex in enumerate(ds.take(num_images).as_numpy_iterator()):
        images.append(_resize_crop(ex["image"], image_size))
        for c in ex["captions"]["text"]:
            texts.append(c.decode())
            t2i.append(i)
    return {"image": np.stack(images), "texts": texts, "text_to_image": np.array(t2i)}


def _resize_crop(img: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    r = tf.image.resize(img, [nh, nw], antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.clip(np.round(r.numpy()[top:top + size, left:left + size]), 0, 255).astype(np.uint8)


@evaluation.register("retrieval")
class Retrieval:
    """Config: dataset ('builtin' | 'tfds:NAME'), num_images, captions_per_image (builtin),
    split / data_dir (tfds), batch_size."""

    requires = ("image_embedding", "text_embedding")

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        ds = cfg.get("dataset", "builtin")
        if ds != "builtin" and not ds.startswith("tfds:"):
            raise ValueError(f"config.evals.{name}.dataset={ds!r}: expected 'builtin' or "
                             "'tfds:NAME'")

    def data(self) -> dict:
        ds, size = self.cfg.get("dataset", "builtin"), self.config.input.image_size
        if ds == "builtin":
            return builtin_retrieval_set(self.config.seed, self.cfg.get("num_images", 256),
                                         self.cfg.get("captions_per_image", 5), size)
        return tfds_retrieval_set(ds[len("tfds:"):], self.cfg.get("split", "val"),
                                  self.cfg.get("num_images", 5000), size,
                                  self.cfg.get("data_dir"))

    def run(self, params) -> dict:
        d = self.data()
        bs = self.cfg.get("batch_size", 256)
        img = common.image_features(self.model, params, d["image"], self.config, bs,
                                    self.mesh)["embedding"]
        txt = common.text_embeddings(self.model, params,
                                     self.tokenizer.tokenize_numpy(d["texts"]), bs, self.mesh)
        res = recall_at_k(img @ txt.T, d["text_to_image"])
        return {f"{self.name}/{k}": v for k, v in res.items()}
