"""Config checks that run before anything is compiled, each naming the offending field."""
import ml_collections

from maeclip_jax.models.pooling import IMAGE_POOLINGS, TEXT_POOLINGS


class ConfigError(ValueError):
    """A config field holds a value that cannot work; the message names the field."""


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _want(missing: list, cond: bool, msg: str) -> None:
    if not cond:
        missing.append(msg)


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError naming the field for any inconsistent setting."""
    from maeclip_jax import models  # the registries
    from maeclip_jax.data import pipeline
    from maeclip_jax.models import layers

    for field in ("seed", "total_steps", "batch_size", "input", "model", "optimizer", "loss"):
        _need(field in config, f"config.{field} is missing")
    m, icfg, lcfg = config.model, config.input, config.loss
    _need(m.name in models.names(),
          f"config.model.name={m.name!r} is not a known model; choose one of {models.names()}")
    # What the user must supply (data, a tokenizer model) is reported all at once.
    missing = []
    if icfg.source == "mixture":
        _want(missing, bool(icfg.get("mixture")),
              "config.input.mixture is empty: config.input.source='mixture' needs "
              "{name: {source, data, weight}} entries")
    elif icfg.source != "builtin":
        _want(missing, bool(icfg.get("data")),
              f"config.input.data is empty: config.input.source={icfg.source!r} needs training "
              "data. Point it at your shards, e.g. --config.input.data='/data/laion/{00000..09999}.tar' "
              "(img2dataset output), or train on the built-in data with --config.input.source=builtin.")
    _need(icfg.source in pipeline.source_names(),
          f"config.input.source={icfg.source!r} is not a known data source; "
          f"choose one of {pipeline.source_names()}")
    _want(missing, icfg.get("tokenizer") != "sentencepiece" or bool(icfg.get("tokenizer_model")),
          "config.input.tokenizer_model is empty: config.input.tokenizer='sentencepiece' needs "
          "a .model file (python -m maeclip_jax.tools.train_tokenizer --input=SHARDS --output=PREFIX)")
    if missing:
        raise ConfigError("\n".join(missing) if len(missing) == 1 else
                          f"{len(missing)} fields need values:\n" + "\n".join(
                              f"- {m}" for m in missing))
    pipeline.check_data(icfg)  # patterns that match nothing fail here, named
    lo, hi = tuple(icfg.get("crop_scale", (0.2, 1.0)))
    _need(0.0 < lo <= hi <= 1.0, f"config.input.crop_scale={(lo, hi)} must satisfy 0 < lo <= hi <= 1")

    _need(config.total_steps > 0, f"config.total_steps must be > 0, got {config.total_steps}")
    _need(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
    _need(config.batch_size % num_devices == 0,
          f"config.batch_size={config.batch_size} is not divisible by the number of devices "
          f"({num_devices}); use a multiple of {num_devices}")
    _need(config.batch_size % process_count == 0,
          f"config.batch_size={config.batch_size} is not divisible by the number of processes "
          f"({process_count})")

    try:
        image = layers.decode_variant(m.image.variant)
    except ValueError as e:
        raise ConfigError(f"config.model.image.variant: {e}") from None
    patch = m.image.get("patch_size") or image.get("patch_size")
    _need(patch is not None, f"config.model.image.variant={m.image.variant!r} has no patch size "
          "(write e.g. 'B/16')")
    _need(icfg.image_size % patch == 0,
          f"config.model.image.variant={m.image.variant!r}: patch size {patch} does not divide "
          f"config.input.image_size={icfg.image_size}")
    _need(m.image.get("pooling", "gap") in IMAGE_POOLINGS,
          f"config.model.image.pooling={m.image.get('pooling')!r}; choose one of {IMAGE_POOLINGS}")
    _need(m.image.get("posemb", "sincos2d") in ("learn", "sincos2d"),
          f"config.model.image.posemb={m.image.get('posemb')!r}; choose 'learn' or 'sincos2d'")
    width = m.image.get("width") or image["width"]
    heads = m.image.get("num_heads") or image["num_heads"]
    _need(width % heads == 0, f"config.model.image: width {width} not divisible by num_heads {heads}")

    has_text = m.name in ("clip", "maeclip")          # a text tower with an embedding
    reads_text = has_text or m.name == "m3ae"         # text tokens are an input
    has_decoder = m.name in ("mae", "maeclip", "m3ae")
    if has_text:
        _need(m.text.get("pooling", "eot") in TEXT_POOLINGS,
              f"config.model.text.pooling={m.text.get('pooling')!r}; choose one of {TEXT_POOLINGS}")
        try:
            layers.decode_variant(m.text.variant)
        except ValueError as e:
            raise ConfigError(f"config.model.text.variant: {e}") from None
    if reads_text:
        _need(icfg.max_text_len >= 2, f"config.input.max_text_len={icfg.max_text_len} must be >= 2")
    if has_decoder:
        _need(0.0 <= config.masking.ratio < 1.0,
              f"config.masking.ratio={config.masking.ratio} must be in [0, 1)")
        _need(m.decoder.width % 4 == 0,
              f"config.model.decoder.width={m.decoder.width} must be divisible by 4 (2-D sin-cos)")

    # Which objectives each model can train (objectives.py); every weight must be >= 0.
    from maeclip_jax import objectives
    trainable = {"clip": ("contrastive",), "mae": ("reconstruction",),
                 "maeclip": ("contrastive", "reconstruction", "text_reconstruction"),
                 "m3ae": ("m3ae",)}.get(m.name, tuple(objectives.names()))
    weights = {k: lcfg[k] for k in lcfg.keys() if k in objectives.names()}
    for k, w in sorted(weights.items()):
        _need(w >= 0, f"config.loss.{k}={w}: loss weights must be >= 0")
        why = {"contrastive": "has no text tower", "reconstruction": "has no decoder"}.get(
            k, f"does not train it (it trains {list(trainable)})")
        _need(w == 0 or k in trainable,
              f"config.loss.{k}={w} but config.model.name={m.name!r} {why}")
    _need(any(w > 0 for w in weights.values()), "config.loss: every loss weight is 0; nothing to train")
    if weights.get("text_reconstruction", 0) > 0 or weights.get("m3ae", 0) > 0:
        tr = config.masking.get("text_ratio")
        _need(tr is not None and 0.0 <= tr < 1.0,
              f"config.masking.text_ratio={tr} must be in [0, 1)")
    if weights.get("text_reconstruction", 0) > 0:
        _need("text_decoder" in m and m.text_decoder.width % m.text_decoder.num_heads == 0,
              "config.model.text_decoder must be set (width divisible by num_heads) when "
              "config.loss.text_reconstruction > 0")
    # Evaluators a model cannot support (zero-shot for MAE) are not an error: they are skipped
    # with the reason logged and shown as n/a in results.md (evaluation.build_evaluators), so
    # one config's eval list serves every model (--config.model.name=mae on the demo config).

    _need(lcfg.get("contrastive_impl", "local") in ("local", "global"),
          f"config.loss.contrastive_impl={lcfg.get('contrastive_impl')!r}; choose 'local' or 'global'")
    _validate_scale_out(config)

    o = config.optimizer
    _need(o.lr > 0, f"config.optimizer.lr must be > 0, got {o.lr}")
    _need(0 <= o.warmup_steps, f"config.optimizer.warmup_steps must be >= 0, got {o.warmup_steps}")
    _need(config.get("log_every_steps", 1) > 0, "config.log_every_steps must be > 0")


def _validate_scale_out(config: ml_collections.ConfigDict) -> None:
    """Mesh axis names, sharding rules and remat policy (maeclip_jax/sharding.py, layers.py)."""
    import re

    from maeclip_jax import sharding
    from maeclip_jax.models import layers
    for axis, size in config.get("mesh", {}).items():
        _need(axis in sharding.MESH_AXES,
              f"config.mesh: unknown axis {axis!r}; axes are {tuple(sharding.MESH_AXES)}")
        _need(isinstance(size, int) and (size > 0 or size == -1),
              f"config.mesh.{axis}={size!r} must be a positive int or -1")
    for i, rule in enumerate((config.get("sharding") or {}).get("rules") or ()):
        ok = isinstance(rule, (tuple, list)) and len(rule) == 2
        _need(ok, f"config.sharding.rules[{i}]={rule!r}: expected (regex, spec)")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f"config.sharding.rules[{i}]: bad regex {rule[0]!r}: {e}") from None
        spec = rule[1]
        _need(spec in ("replicate", "fsdp") or (
            isinstance(spec, (tuple, list)) and all(a is None or a in sharding.MESH_AXES for a in spec)),
            f"config.sharding.rules[{i}] spec {spec!r}: expected 'replicate', 'fsdp' or a tuple "
            f"of mesh axes / None")
    try:
        layers.remat_policy(config.model.get("remat", False))
    except ValueError as e:
        raise ConfigError(str(e)) from None
