"""Model registry: `config.model.name` selects a builder; every builder returns a module with
`encode_image` (the evaluators' image features: `pooled`, `tokens`), the flags `has_text` (a text
embedding for zero-shot / retrieval: `encode_text`, `temperature_scale`) and `has_decoder`, and
the passes its objectives call (`reconstruct_image`, `reconstruct_text`, M3AE's `reconstruct`).
"""
from typing import Callable, Dict

import jax.numpy as jnp
import ml_collections

from maeclip_jax.models import layers
from maeclip_jax.models.image_text import ImageTextModel
from maeclip_jax.models.m3ae import M3AE

_BUILDERS: Dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def names() -> list:
    return sorted(_BUILDERS)


def tower_kwargs(cfg: ml_collections.ConfigDict) -> dict:
    """Architecture kwargs from `variant` ('B/16', 'M', ...) with explicit fields overriding."""
    out = layers.decode_variant(cfg.variant)
    for key in ("width", "depth", "mlp_dim", "num_heads", "patch_size"):
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    return out


def _image_kwargs(mcfg) -> dict:
    return dict(tower_kwargs(mcfg.image), posemb=mcfg.image.get("posemb", "sincos2d"),
                pooling=mcfg.image.get("pooling", "gap"))


def _text_kwargs(mcfg, input_cfg) -> dict:
    return dict(tower_kwargs(mcfg.text), vocab_size=mcfg.text.vocab_size,
                max_len=input_cfg.max_text_len, pooling=mcfg.text.get("pooling", "eot"))


def _decoder_kwargs(mcfg) -> dict:
    d = mcfg.decoder
    return dict(width=d.width, depth=d.depth, mlp_dim=d.mlp_dim, num_heads=d.num_heads)


def _common(config) -> dict:
    return dict(embed_dim=config.model.get("embed_dim", 512), image_size=config.input.image_size,
                remat=config.model.get("remat", False),
                scan=config.model.get("scan_layers", False),
                dtype=jnp.dtype(config.model.get("dtype", "float32")))


@register("clip")
def _clip(config):
    return ImageTextModel(image=_image_kwargs(config.model),
                          text=_text_kwargs(config.model, config.input), decoder=None,
                          **_common(config))


@register("mae")
def _mae(config):
    return ImageTextModel(image=_image_kwargs(config.model), text=None,
                          decoder=_decoder_kwargs(config.model), **_common(config))


def _text_decoder_kwargs(config):
    """The light text decoder exists only when text reconstruction is trained."""
    if float(config.loss.get("text_reconstruction", 0.0)) <= 0:
        return None
    d = config.model.text_decoder
    return dict(width=d.width, depth=d.depth, mlp_dim=d.mlp_dim, num_heads=d.num_heads)


@register("maeclip")
def _maeclip(config):
    return ImageTextModel(image=_image_kwargs(config.model),
                          text=_text_kwargs(config.model, config.input),
                          decoder=_decoder_kwargs(config.model),
                          text_decoder=_text_decoder_kwargs(config), **_common(config))


@register("m3ae")
def _m3ae(config):
    common = _common(config)
    return M3AE(image=_image_kwargs(config.model),
                text=dict(vocab_size=config.model.text.vocab_size,
                          max_len=config.input.max_text_len),
                decoder=_decoder_kwargs(config.model), image_size=common["image_size"],
                remat=common["remat"], scan=common["scan"], dtype=common["dtype"])


def build(config: ml_collections.ConfigDict):
    """Builds the model named by `config.model.name` from the whole config."""
    name = config.model.name
    if name not in _BUILDERS:
        raise ValueError(f"config.model.name={name!r} is not a known model; known: {names()}")
    return _BUILDERS[name](config)
