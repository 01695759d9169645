"""Image-text retrieval: image->text and text->image recall@1/5/10 with several captions per
image.

Datasets (`config.evals.<name>.dataset`):
- 'builtin': training-style scenes (1-3 objects) from a seed no training run uses
  (common.builtin_scenes), each with `captions_per_image` captions written from the scene's
  ground truth (the generator's caption plus re-wordings: other prefixes, other object orders,
  with and without positions).
- 'tfds:NAME' (e.g. 'tfds:coco_captions', split from `split`, default 'test': coco_captions'
  Karpathy 5k test images, on which COCO retrieval is reported): images
  (`image_key`, default 'image') with all their captions (`text_key`, default 'captions/text'
  as TFDS coco_captions stores them); read from `data_dir`, never downloaded.
- 'img2dataset:PATTERN' (e.g. Flickr30k as img2dataset writes it: 'img2dataset:/data/
  flickr30k_test/{00000..00001}.tar', ';'-separated patterns, local or gs://): webdataset .tar
  or TFRecord shards (`format` 'auto' | 'tar' | 'tfrecord'), read with data/shards.py. An
  image's captions are the non-empty lines of its caption (KEY.txt / the `txt` feature). Broken
  records (no image or caption, undecodable image, non-UTF-8 text) are skipped and logged.
External images are resized (shorter side) and centre-cropped to config.input.image_size
(common.resize_center_crop); `num_images` caps how many are read (0 = all).

Ties count against the model (an item scoring the same as the correct one ranks above it), so a
constant model gets chance-level recall, not 100%.
"""
import logging
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
                       data_dir: str = None, image_key: str = "image",
                       text_key: str = "captions/text", eval_name: str = "retrieval") -> dict:
    """Images (resized shorter side + centre crop) and all their captions from a TFDS captioning
    dataset (coco_captions: features image and captions/text). num_images 0 = all."""
    import tensorflow as tf
    builder = common.tfds_builder(eval_name, name, data_dir)
    ds = common.tfds_split(builder, eval_name, "split", split, data_dir)
    if num_images > 0:
        ds = ds.take(num_images)
    common.get_path(ds.element_spec, image_key, f"config.evals.{eval_name}.image_key")
    common.get_path(ds.element_spec, text_key, f"config.evals.{eval_name}.text_key")

    def prep(ex):
        txt = common.get_path(ex, text_key, "text_key")
        return {"image": common.resize_center_crop(common.get_path(ex, image_key, "image_key"),
                                                   image_size),
                "text": tf.reshape(txt, [-1])}  # one caption or a sequence of them
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images, texts, t2i = [], [], []
    for ex in ds.as_numpy_iterator():
        caps = [c.decode("utf-8", "replace").strip() for c in ex["text"]]
        caps = [c for c in caps if c]
        if not caps:
            continue
        texts += caps
        t2i += [len(images)] * len(caps)
        images.append(ex["image"])
    return _retrieval_set(images, texts, t2i, f"TFDS {name!r} split {split!r}")


def caption_lines(raw: bytes) -> list:
    """The captions of one image: the non-empty, stripped lines of its caption text (raises
    UnicodeDecodeError on non-UTF-8 bytes)."""
    return [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]


def img2dataset_retrieval_set(pattern: str, num_images: int, image_size: int,
                              fmt: str = "auto", eval_name: str = "retrieval") -> dict:
    """Images (resized shorter side + centre crop) and their captions (one per line) from
    img2dataset shards, in file order then archive order; broken records skipped and counted."""
    import tensorflow as tf
    from maeclip_jax.data import shards
    files, formats = img2dataset_files(pattern, fmt, eval_name)
    images, texts, t2i, skipped = [], [], [], 0
    for path, f in zip(files, formats):
        if 0 < num_images <= len(images):
            break
        records = shards.READERS[f](tf.constant(path))
        if shards.PARSERS[f] is not None:
            records = records.map(shards.PARSERS[f])
        for rec in records.as_numpy_iterator():
            if 0 < num_images <= len(images):
                break
            try:
                if not rec["ok"]:
                    raise ValueError("no image or no caption")
                caps = caption_lines(rec["txt"])
                if not caps:
                    raise ValueError("empty caption")
                img = tf.io.decode_image(rec["jpg"], channels=3, expand_animations=False)
                img = common.resize_center_crop(img, image_size).numpy()
            except (ValueError, UnicodeDecodeError, tf.errors.InvalidArgumentError):
                skipped += 1
                continue
            texts += caps
            t2i += [len(images)] * len(caps)
            images.append(img)
    if skipped:
        logging.warning("config.evals.%s: skipped %d broken records of %s", eval_name, skipped,
                        pattern)
    return _retrieval_set(images, texts, t2i, f"img2dataset shards {pattern!r}")


def img2dataset_files(pattern: str, fmt: str, eval_name: str) -> tuple:
    """(files, their formats) of a ';'-separated list of glob / brace patterns; raises
    FileNotFoundError naming the config field when a pattern matches nothing or a file's
    format is unknown."""
    from maeclip_jax.data import shards
    try:
        files = shards.list_files(pattern)
        return files, [shards.shard_format(f, fmt) for f in files]
    except shards.DataError as e:
        msg = (str(e).replace("config.input.data pattern", "pattern")
               .replace("config.input.format", f"config.evals.{eval_name}.format"))
        raise FileNotFoundError(f"config.evals.{eval_name}.dataset='img2dataset:{pattern}' "
                                f"(format={fmt!r}): {msg}") from e


def _retrieval_set(images: list, texts: list, t2i: list, what: str) -> dict:
    if not images:
        raise ValueError(f"retrieval: no usable image with captions in {what}")
    logging.info("retrieval set: %d images, %d captions from %s", len(images), len(texts), what)
    return {"image": np.stack(images), "texts": texts, "text_to_image": np.array(t2i)}


@evaluation.register("retrieval")
class Retrieval:
    """Config: dataset ('builtin' | 'tfds:NAME' | 'img2dataset:PATTERN'), num_images (0 = all
    for tfds / img2dataset; default 256 builtin, 5000 tfds), batch_size; builtin:
    captions_per_image; tfds: split ('test'), data_dir, image_key ('image'), text_key
    ('captions/text'); img2dataset: format ('auto' | 'tar' | 'tfrecord'). ''/() mean unset."""

    requires = ("image_embedding", "text_embedding")

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        self.kind, self.dataset = common.dataset_kind(cfg, name,
                                                      ("builtin", "tfds", "img2dataset"))
        self._external = None  # the tfds / img2dataset set, read once
        if self.kind == "img2dataset":  # fail now, before any training, if no shard is there
            img2dataset_files(self.dataset, common.field(cfg, "format", "auto"), name)
        elif self.kind == "tfds":
            data_dir = common.field(cfg, "data_dir", "")
            common.tfds_split(common.tfds_builder(name, self.dataset, data_dir), name, "split",
                              common.field(cfg, "split", "test"), data_dir)

    def data(self) -> dict:
        cfg, size = self.cfg, self.config.input.image_size
        if self.kind == "builtin":
            return builtin_retrieval_set(self.config.seed, common.field(cfg, "num_images", 256),
                                         common.field(cfg, "captions_per_image", 5), size)
        if self._external is None:
            if self.kind == "tfds":
                self._external = tfds_retrieval_set(
                    self.dataset, common.field(cfg, "split", "test"),
                    int(common.field(cfg, "num_images", 5000)), size,
                    common.field(cfg, "data_dir", "") or None,
                    common.field(cfg, "image_key", "image"),
                    common.field(cfg, "text_key", "captions/text"), self.name)
            else:
                self._external = img2dataset_retrieval_set(
                    self.dataset, int(common.field(cfg, "num_images", 0)), size,
                    common.field(cfg, "format", "auto"), self.name)
        return self._external

    def run(self, params) -> dict:
        d = self.data()
        bs = common.field(self.cfg, "batch_size", 256)
        img = common.image_features(self.model, params, d["image"], self.config, bs,
                                    self.mesh)["embedding"]
        txt = common.text_embeddings(self.model, params,
                                     self.tokenizer.tokenize_numpy(d["texts"]), bs, self.mesh)
        res = recall_at_k(img @ txt.T, d["text_to_image"])
        return {f"{self.name}/{k}": v for k, v in res.items()}
