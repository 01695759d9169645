"""Evaluator registry: `config.evals.<name>` (with an optional `type`, defaulting to the name)
selects and parameterises an evaluator. Every evaluator has `run(params) -> {metric: value}`
with metric names prefixed by the evaluator's name."""
from typing import Callable, Dict

import ml_collections

_EVALUATORS: Dict[str, Callable] = {}


def register(name: str):
    def wrap(cls):
        _EVALUATORS[name] = cls
        return cls
    return wrap


def names() -> list:
    return sorted(_EVALUATORS)


def build_evaluators(config: ml_collections.ConfigDict, model, tokenizer, mesh) -> dict:
    """{name: evaluator} for every entry of `config.evals`."""
    from maeclip_jax.evaluation import linear_probe, zero_shot  # noqa: F401 (registration)
    out = {}
    for name, cfg in (config.get("evals") or {}).items():
        kind = cfg.get("type", name)
        if kind not in _EVALUATORS:
            raise ValueError(f"config.evals.{name}: unknown evaluator type {kind!r}; known: {names()}")
        out[name] = _EVALUATORS[kind](name, cfg, config, model, tokenizer, mesh)
    return out


def run_evaluators(evaluators: dict, params) -> dict:
    results = {}
    for ev in evaluators.values():
        results.update(ev.run(params))
    return results
