"""Zero-shot classification: class embeddings from an ensemble of prompt templates (each
template's text embedding, averaged over templates, re-normalised), top-1 / top-5 accuracy.

Class names and templates come from the config (`class_names`, `templates`) or from files
(`classes_file`, `templates_file`: JSON list or one entry per line; a JSON object may hold both
`class_names` and `templates`). Prompts go through the training tokenizer, so they get exactly
the pinned normalisation (tokenizer.normalize_text) the captions got.
"""
import json
from typing import List, Sequence, Tuple

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
    with open(path) as f:
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


def class_names_and_templates(cfg, name: str, default_names: Sequence[str]) -> Tuple[list, list]:
    if cfg.get("class_names") and cfg.get("classes_file"):
        raise ValueError(f"config.evals.{name}: set class_names or classes_file, not both")
    names = (list(cfg.class_names) if cfg.get("class_names") else
             read_list_file(cfg.classes_file, "class_names") if cfg.get("classes_file") else
             list(default_names))
    templates = (list(cfg.templates) if cfg.get("templates") else
                 read_list_file(cfg.templates_file, "templates") if cfg.get("templates_file")
                 else list(DEFAULT_TEMPLATES))
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"config.evals.{name}: template {t!r} must hold exactly one '{{}}'")
    return names, templates


@evaluation.register("zero_shot")
class ZeroShot:
    """Config: num_examples, batch_size, class_names | classes_file, templates | templates_file.

    On the built-in split class i is builtin.CLASS_NAMES[i] ("red circle"); given names must
    list the same number of classes in that order (they may be re-worded).
    """

    requires = ("image_embedding", "text_embedding")

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        from maeclip_jax.data import builtin
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh
        self.class_names, self.templates = class_names_and_templates(cfg, name,
                                                                     builtin.CLASS_NAMES)
        if len(self.class_names) != builtin.NUM_CLASSES:
            raise ValueError(f"config.evals.{name}: {len(self.class_names)} class names given, "
                             f"the built-in split has {builtin.NUM_CLASSES}")

    def prompts(self) -> Tuple[list, int]:
        return [t.format(c) for c in self.class_names for t in self.templates], len(self.templates)

    def run(self, params) -> dict:
        data = common.builtin_eval_split(self.config.seed, self.cfg.num_examples,
                                         self.config.input.image_size)
        prompts, n_t = self.prompts()
        bs = self.cfg.get("batch_size", 256)
        txt = common.text_embeddings(self.model, params, self.tokenizer.tokenize_numpy(prompts),
                                     bs, self.mesh)
        cls = class_embeddings(txt, len(self.class_names), n_t)
        img = common.image_features(self.model, params, data["image"], self.config, bs,
                                    self.mesh)["embedding"]
        logits = img @ cls.T
        return {f"{self.name}/top1": topk_accuracy(logits, data["label"], 1),
                f"{self.name}/top5": topk_accuracy(logits, data["label"], 5)}
