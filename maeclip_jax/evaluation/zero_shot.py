"""Zero-shot classification: class embeddings from an ensemble of prompt templates (each
template's text embedding, averaged over templates, re-normalised), top-1 / top-5 accuracy.

Class names and templates come from the config (`class_names`, `templates`) or from files
(`classes_file`, `templates_file`, local or gs://: JSON list or one entry per line; a JSON
object may hold both `class_names` and `templates`). On a TFDS dataset without them the label
feature's names are used (underscores as spaces), unless they are WordNet ids (imagenet2012's
'n01440764') or bare numbers: then a classes file is required. Prompts go through the training
tokenizer, so they get exactly the pinned normalisation (tokenizer.normalize_text) the captions
got.
"""
import json
import re
from typing import List, Sequence, Tuple

import tensorflow as tf

import numpy as np

from maeclip_jax import evaluation
from maeclip_jax.evaluation import common

DEFAULT_TEMPLATES = ("a {}", "a photo of a {}", "an image of a {}", "there is a {}",
                     "a small {}", "a large {}")


def class_embeddings(text_emb: np.ndarray, num_classes: int, num_templates: int) -> np.ndarray:
    """`[C * T, D]` (class-major) -> `[C, D]`: mean over templates, then L2-normalised."""
    e = text_emb.reshape(num_classes, num_templates, -1).mean(1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    topk = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def read_list_file(path: str, key: str) -> List[str]:
    """A JSON list / JSON object holding `key` / text file with one entry per line."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            if key not in data:
                raise ValueError(f"{path}: JSON object has no {key!r} field (has {sorted(data)})")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ValueError(f"{path}: expected a JSON list of strings for {key!r}")
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_names_and_templates(cfg, name: str, default_names) -> Tuple[list, list]:
    """(class names, templates) from the config / files, else `default_names` (a sequence, or
    a callable giving one, called only when needed) and DEFAULT_TEMPLATES."""
    names, names_file = common.field(cfg, "class_names"), common.field(cfg, "classes_file")
    if names and names_file:
        raise ValueError(f"config.evals.{name}: set class_names or classes_file, not both")
    names = (list(names) if names else read_list_file(names_file, "class_names") if names_file
             else list(default_names() if callable(default_names) else default_names))
    temps, temps_file = common.field(cfg, "templates"), common.field(cfg, "templates_file")
    templates = (list(temps) if temps else read_list_file(temps_file, "templates") if temps_file
                 else list(DEFAULT_TEMPLATES))
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"config.evals.{name}: template {t!r} must hold exactly one '{{}}'")
    return names, templates


_WORDNET_ID = re.compile(r"^n\d{8}$")


def tfds_class_names(builder, name: str, label_key: str) -> List[str]:
    """The names of a TFDS ClassLabel feature as prompts ('american_bulldog' -> 'american
    bulldog'). Raises ValueError asking for `classes_file` when the names are not words."""
    feat = common.tfds_class_feature(builder, name, label_key)
    ask = (f"set config.evals.{name}.classes_file (one class name per line, in label order) "
           f"or class_names")
    if feat is None or not feat.names:
        raise ValueError(f"config.evals.{name}: the label {label_key!r} of TFDS "
                         f"{builder.name!r} has no class names; {ask}")
    names = list(feat.names)
    if any(_WORDNET_ID.match(n) for n in names):
        raise ValueError(f"config.evals.{name}: TFDS {builder.name!r} names its classes by "
                         f"WordNet id ({names[0]!r}, ...), not words a prompt can use; {ask} "
                         "(for imagenet2012, e.g. the CLIP repository's ImageNet class names)")
    if all(n.strip().isdigit() for n in names):
        raise ValueError(f"config.evals.{name}: TFDS {builder.name!r} names its classes by "
                         f"number ({names[0]!r}, ...); {ask}")
    return [n.replace("_", " ") for n in names]


@evaluation.register("zero_shot")
class ZeroShot:
    """Config: dataset ('builtin' | 'tfds:NAME'), class_names | classes_file, templates |
    templates_file, batch_size; builtin: num_examples; TFDS: test_split (default 'validation'
    where the dataset has one, else 'test'), data_dir, image_key ('image'), label_key
    ('label'), num_test_examples (cap; 0 = the whole split). ''/() mean unset.

    Class i is named by the i-th class name. On the built-in split that is
    builtin.CLASS_NAMES[i] ("red circle"); on a TFDS dataset the label feature's i-th name.
    Given names must list the same number of classes in that order (they may be re-worded).
    """

    requires = ("image_embedding", "text_embedding")

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        from maeclip_jax.data import builtin
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        self.kind, self.dataset = common.dataset_kind(cfg, name, ("builtin", "tfds"))
        if self.kind == "tfds":
            data_dir = common.field(cfg, "data_dir", "")
            self.builder = common.tfds_builder(name, self.dataset, data_dir)
            self.test_split = common.field(cfg, "test_split",
                                           common.default_test_split(self.builder))
            common.tfds_split(self.builder, name, "test_split", self.test_split, data_dir)
            label_key = common.field(cfg, "label_key", "label")
            feat = common.tfds_class_feature(self.builder, name, label_key)
            num_classes = feat.num_classes if feat is not None else None
            default = lambda: tfds_class_names(self.builder, name, label_key)  # noqa: E731
            where = f"TFDS {self.dataset!r}"
        else:
            num_classes, default, where = builtin.NUM_CLASSES, builtin.CLASS_NAMES, "the built-in split"
        self.class_names, self.templates = class_names_and_templates(cfg, name, default)
        if num_classes is not None and len(self.class_names) != num_classes:
            raise ValueError(f"config.evals.{name}: {len(self.class_names)} class names given, "
                             f"{where} has {num_classes} classes")

    def prompts(self) -> Tuple[list, int]:
        return [t.format(c) for c in self.class_names for t in self.templates], len(self.templates)

    def image_embeddings(self, params, bs: int) -> Tuple[np.ndarray, np.ndarray]:
        """(image embeddings `[N, D]`, labels `[N]`) of the evaluation images."""
        if self.kind == "tfds":
            cfg = self.cfg
            ds = common.tfds_split(self.builder, self.name, "test_split", self.test_split,
                                   common.field(cfg, "data_dir", ""))
            chunks = common.tfds_image_label_chunks(
                ds, self.name, common.field(cfg, "image_key", "image"),
                common.field(cfg, "label_key", "label"), self.config.input.image_size,
                int(common.field(cfg, "num_test_examples", 0)), 16 * bs)
            feats, y = common.features_of_chunks(self.model, params, chunks, self.config, bs,
                                                 self.mesh, ("embedding",))
            return feats["embedding"], y
        data = common.builtin_eval_split(self.config.seed, self.cfg.num_examples,
                                         self.config.input.image_size)
        img = common.image_features(self.model, params, data["image"], self.config, bs,
                                    self.mesh)["embedding"]
        return img, data["label"]

    def run(self, params) -> dict:
        prompts, n_t = self.prompts()
        bs = common.field(self.cfg, "batch_size", 256)
        txt = common.text_embeddings(self.model, params, self.tokenizer.tokenize_numpy(prompts),
                                     bs, self.mesh)
        cls = class_embeddings(txt, len(self.class_names), n_t)
        img, labels = self.image_embeddings(params, bs)
        if labels.size and labels.max() >= len(self.class_names):
            raise ValueError(f"config.evals.{self.name}: label {int(labels.max())} but only "
                             f"{len(self.class_names)} class names")
        logits = img @ cls.T
        return {f"{self.name}/top1": topk_accuracy(logits, labels, 1),
                f"{self.name}/top5": topk_accuracy(logits, labels, 5)}
