"""Converts parameters (or a whole train state: Adam's moments have the same layout) between
the loop layout of layers.Encoder (`block0`, `block1`, ... each `{...}`) and its nn.scan layout
(`blocks/block` holding the same leaves stacked `[depth, ...]`), so a checkpoint trained with
config.model.scan_layers=True restores into a model with it False, and back."""
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"^block(\d+)$")


def _map_dicts(fn, tree: Any) -> Any:
    """Applies `fn` to every mapping in `tree` (bottom-up through tuples, lists, namedtuples)."""
    if isinstance(tree, Mapping):
        return fn({k: _map_dicts(fn, v) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_map_dicts(fn, v) for v in tree])
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_dicts(fn, v) for v in tree)
    return tree


def loop_to_scan(tree: Any) -> Any:
    """`{block0: p0, ..., blockN-1: pN-1, ...}` -> `{blocks: {block: stack(p)}, ...}`."""
    def convert(d: dict) -> dict:
        ids = sorted(int(m.group(1)) for k in d if (m := _BLOCK.match(k)))
        if not ids:
            return d
        if ids != list(range(len(ids))):
            raise ValueError(f"blocks {ids} are not numbered 0..{len(ids) - 1}")
        out = {k: v for k, v in d.items() if not _BLOCK.match(k)}
        out["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs),
                                               *[d[f"block{i}"] for i in ids])}
        return out
    return _map_dicts(convert, tree)


def scan_to_loop(tree: Any) -> Any:
    """`{blocks: {block: stacked}, ...}` -> `{block0: ..., blockN-1: ..., ...}`."""
    def convert(d: dict) -> dict:
        if not (isinstance(d.get("blocks"), Mapping) and set(d["blocks"]) == {"block"}):
            return d
        stacked = d["blocks"]["block"]
        depth = jax.tree.leaves(stacked)[0].shape[0]
        out = {k: v for k, v in d.items() if k != "blocks"}
        for i in range(depth):
            out[f"block{i}"] = jax.tree.map(lambda x: x[i], stacked)
        return out
    return _map_dicts(convert, tree)
