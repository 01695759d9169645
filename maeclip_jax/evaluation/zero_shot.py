"""Zero-shot classification: class embeddings from an ensemble of prompt templates (each
template's text embedding, averaged over templates, re-normalised), top-1 / top-5 accuracy."""
from typing import Sequence

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


@evaluation.register("zero_shot")
class ZeroShot:
    """Config: num_examples, batch_size, templates (with '{}' for the class name)."""

    def __init__(self, name, cfg, config, model, tokenizer, mesh):
        if not getattr(model, "has_text", False):
            raise ValueError(f"config.evals.{name}: zero-shot needs a text tower; model "
                             f"{config.model.name!r} has none. Remove this evaluator.")
        self.name, self.cfg, self.config, self.model = name, cfg, config, model
        self.tokenizer, self.mesh = tokenizer, mesh

    def prompts(self, class_names: Sequence[str]) -> list:
        templates = tuple(self.cfg.get("templates") or DEFAULT_TEMPLATES)
        return [t.format(c) for c in class_names for t in templates], len(templates)

    def run(self, params) -> dict:
        from maeclip_jax.data import builtin
        data = common.builtin_eval_split(self.config.seed, self.cfg.num_examples,
                                         self.config.input.image_size)
        prompts, n_t = self.prompts(builtin.CLASS_NAMES)
        bs = self.cfg.get("batch_size", 256)
        txt = common.text_embeddings(self.model, params, self.tokenizer.tokenize_numpy(prompts),
                                     bs, self.mesh)
        cls = class_embeddings(txt, builtin.NUM_CLASSES, n_t)
        img = common.image_features(self.model, params, data["image"], self.config, bs,
                                    self.mesh)["embedding"]
        logits = img @ cls.T
        return {f"{self.name}/top1": topk_accuracy(logits, data["label"], 1),
                f"{self.name}/top5": topk_accuracy(logits, data["label"], 5)}
