"""Evaluator registry: `config.evals.<name>` (with an optional `type`, defaulting to the name)
selects and parameterises an evaluator. Every evaluator has `run(params) -> {metric: value}`
with metric names prefixed by the evaluator's name.

An evaluator class may declare `requires` (a tuple of `common.capabilities` keys, e.g.
'text_embedding'). On a model lacking one (MAE has no text tower, M3AE no text embedding) it is
replaced by a `NotApplicable` stand-in that logs why, returns no metrics, and shows as 'n/a' in
results.md, so one config's eval list can serve every model. The reasons go to the log and to
results.md (`not_applicable`), never into results.json, which maps metrics to values.
"""
import logging
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


class NotApplicable:
    """Stands in for an evaluator the model cannot support."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason

    def run(self, params) -> dict:
        return {}


def _register_all():
    from maeclip_jax.evaluation import (grounding, linear_probe, retrieval, vqa,  # noqa: F401
                                        zero_shot)


def build_evaluators(config: ml_collections.ConfigDict, model, tokenizer, mesh,
                     workdir: str = None) -> dict:
    """{name: evaluator} for every entry of `config.evals`. `workdir` is where evaluators that
    write files (grounding pictures) put them."""
    from maeclip_jax.evaluation import common
    _register_all()
    out, caps, errors = {}, None, []
    for name, cfg in (config.get("evals") or {}).items():
        kind = cfg.get("type", name)
        if kind not in _EVALUATORS:
            raise ValueError(f"config.evals.{name}: unknown evaluator type {kind!r}; known: {names()}")
        cls = _EVALUATORS[kind]
        if getattr(cls, "requires", ()):
            caps = caps if caps is not None else common.capabilities(model, config)
            missing = [r for r in cls.requires if not caps[r]]
            if missing:
                reason = (f"needs {' and '.join(missing)}, which model {config.model.name!r} "
                          f"does not have")
                logging.warning("config.evals.%s (%s) does not apply: %s; skipped", name, kind,
                                reason)
                out[name] = NotApplicable(name, reason)
                continue
        try:
            ev = cls(name, cfg, config, model, tokenizer, mesh)
        except (ValueError, KeyError, FileNotFoundError) as e:
            errors.append(e)  # report every evaluator that cannot start, not just the first
            continue
        ev.workdir = workdir
        out[name] = ev
    if len(errors) == 1:
        raise errors[0]
    if errors:
        kinds = {type(e) for e in errors}
        kind = kinds.pop() if len(kinds) == 1 and KeyError not in kinds else ValueError
        raise kind(f"{len(errors)} evaluators cannot start:\n" + "\n".join(
            f"- {e.args[0] if e.args else e}" for e in errors))
    return out


def not_applicable(evaluators: dict) -> dict:
    """{name: reason} of the evaluators skipped for this model."""
    return {n: e.reason for n, e in evaluators.items() if isinstance(e, NotApplicable)}


def run_evaluators(evaluators: dict, params) -> dict:
    import time
    results = {}
    for name, ev in evaluators.items():
        t0 = time.perf_counter()
        results.update(ev.run(params))
        if not isinstance(ev, NotApplicable):
            logging.info("evaluator %s took %.1fs", name, time.perf_counter() - t0)
    return results
