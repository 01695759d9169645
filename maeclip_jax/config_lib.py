"""Defaults shared by every config file; a config file starts from `base_config()` and sets
what differs. Fields are documented here once."""
import json
import os

import ml_collections
from ml_collections.config_dict import placeholder

# Fields that are unset by default hold typed placeholders (None until set), so that they can
# still be given on the command line (ml_collections refuses to override a plain None).


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""                   # recorded in results.json
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256            # global, over all processes and devices
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.eval_every_steps = 0        # 0: evaluate only at the end
    c.peak_flops_per_device = placeholder(float)  # for MFU; unset: by device kind (CPU: a measured matmul)
    # Axis name -> size (-1: the rest); see maeclip_jax/sharding.py. Size-1 axes cost nothing and
    # can be set from the command line, e.g. --config.mesh.fsdp=8.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    # Parameter / optimizer-state shardings (maeclip_jax/sharding.py): ordered (regex, spec)
    # rules, None = sharding.DEFAULT_RULES (tensor parallel over `model`, FSDP over `fsdp`).
    c.sharding = ml_collections.ConfigDict(
        {"rules": None, "fsdp_axis": "fsdp", "fsdp_min_size": 2 ** 16})

    c.input = ml_collections.ConfigDict()
    c.input.source = "builtin"    # registry name, see maeclip_jax/data/pipeline.py
    c.input.data = ""             # files / dataset name, for sources that need them
    # img2dataset: glob / brace patterns (';'-separated), local or gs://; format by extension.
    c.input.format = "auto"       # img2dataset shards: auto | tar | tfrecord
    c.input.split = "train"       # tfds: split; data_dir; keys ('/' for nested features)
    c.input.data_dir = ""
    c.input.image_key = "image"
    c.input.text_key = "text"
    c.input.mixture = ml_collections.ConfigDict()  # source=mixture: {name: {source, data, weight}}
    c.input.shuffle_buffer = 10_000  # file sources: raw records; saved with the data position
    c.input.shuffle_files = True  # file sources: a new seeded file order every epoch
    c.input.cycle_length = 8      # file sources: shards read at once
    c.input.crop_scale = (0.2, 1.0)  # file sources: random-resized-crop area (MAE: (0.2, 1))
    c.input.crop_ratio = (3 / 4, 4 / 3)
    c.input.flip = True
    c.input.first_batch_timeout_s = 300  # fail, naming a shard, if no batch arrives by then
    c.input.batch_timeout_s = 600  # later batches too (a stalled gs:// read); 0: wait forever
    c.input.image_size = 64
    c.input.max_text_len = 32
    c.input.tokenizer = "builtin_words"  # or sentencepiece (+ tokenizer_model)
    c.input.tokenizer_model = ""  # sentencepiece .model (python -m maeclip_jax.tools.train_tokenizer)
    c.input.mean = (0.5, 0.5, 0.5)  # pixels are normalised as (x / 255 - mean) / std on device
    c.input.std = (0.5, 0.5, 0.5)
    c.input.prefetch = 2
    c.input.num_threads = 0       # tf.data private thread pool size; 0: TF's shared default

    c.model = ml_collections.ConfigDict()
    c.model.name = "maeclip"      # clip | mae | maeclip | m3ae
    # A tower's size comes from `variant` (models/layers.py VARIANTS); width, depth, mlp_dim,
    # num_heads (and patch_size for images) override single numbers of it.
    sizes = lambda: {k: placeholder(int) for k in ("width", "depth", "mlp_dim", "num_heads")}
    c.model.image = ml_collections.ConfigDict(
        {"variant": "mu/8", "posemb": "sincos2d", "pooling": "gap", "patch_size": placeholder(int),
         **sizes()})
    c.model.text = ml_collections.ConfigDict(  # vocab_size: unset = the tokenizer's
        {"variant": "mu", "pooling": "eot", "vocab_size": placeholder(int), **sizes()})
    c.model.decoder = ml_collections.ConfigDict(
        {"width": 64, "depth": 1, "mlp_dim": 256, "num_heads": 4})
    # MAE-CLIP's optional masked-text decoder (built only if loss.text_reconstruction > 0).
    c.model.text_decoder = ml_collections.ConfigDict(
        {"width": 64, "depth": 1, "mlp_dim": 256, "num_heads": 4})
    c.model.embed_dim = 128
    c.model.dtype = "float32"     # computation dtype; parameters stay float32
    c.model.remat = "none"        # none | full | dots | dots_no_batch (models/layers.py)
    c.model.scan_layers = False   # nn.scan over blocks (one compiled block; params stacked)

    # ratio: image patches; text_ratio: real text tokens (M3AE, MAE-CLIP text reconstruction).
    c.masking = ml_collections.ConfigDict({"ratio": 0.75, "text_ratio": 0.75})
    # Objective name -> weight; the step sums the weighted terms.
    # text_reconstruction: MAE-CLIP's optional masked-text loss, off by default (the paper's
    # exact choice is not public). M3AE configs use {'m3ae': 1.0, 'm3ae_text_weight': 0.5}.
    c.loss = ml_collections.ConfigDict({"contrastive": 1.0, "reconstruction": 1.0,
                                        "text_reconstruction": 0.0, "m3ae": 0.0,
                                        "m3ae_text_weight": 0.5, "norm_pix": True})
    # 'local': each device scores its own rows against the gathered other tower, in chunks
    # (per-device memory flat in the device count); 'global': the whole B x B logits.
    c.loss.contrastive_impl = "local"

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-3, warmup_steps=100, min_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6,
        weight_decay=0.2, clip_grad_norm=1.0))

    # Evaluators (maeclip_jax/evaluation/, fields in each class's docstring). Every field they
    # read has a typed default here so that it can be set on the command line
    # (--config.evals.linear_probe.dataset=tfds:imagenet2012); '' / () / 0 mean unset.
    # dataset: 'builtin' (num_examples of the built-in eval split) or 'tfds:NAME' (train_split,
    # test_split ('' = validation, else test), data_dir, image_key, label_key,
    # num_train_examples / num_test_examples: caps, 0 = the whole split).
    tfds_fields = dict(dataset="builtin", data_dir="", image_key="image", label_key="label",
                       test_split="", num_test_examples=0)
    c.evals = ml_collections.ConfigDict()
    c.evals.linear_probe = ml_collections.ConfigDict(dict(
        num_examples=2048, batch_size=256, protocol="ridge", shots=0, feature="pooled",
        c_grid=(), l2_grid=(), train_split="", num_train_examples=0, **tfds_fields))
    c.evals.zero_shot = ml_collections.ConfigDict(dict(
        num_examples=1024, batch_size=256, class_names=(), classes_file="", templates=(),
        templates_file="", **tfds_fields))
    return c


def demo_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The built-in-data budget of the README demo and of every `:tiny` config (about 5 minutes
    on a 2-core CPU): 1,600 steps of 32 examples. On these small scenes, many small steps teach
    shape (what the hard negatives of each batch differ in) far better than fewer large ones
    at the same number of examples (linear probe 0.64 vs 0.50 at batch 128 x 400 steps)."""
    c.total_steps = 1600
    c.batch_size = 32
    c.log_every_steps = 100
    c.checkpoint_every_steps = 400
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 160
    return c



# Fields that define what a run trains. Resuming or evaluating a workdir with other values would
# restore the checkpoint into a different model (pooling has no parameters, so nothing else
# notices) or continue it with another objective.
_MODEL_FIELDS = ("model.", "input.image_size", "input.max_text_len", "input.tokenizer",
                 "input.tokenizer_model")
_OBJECTIVE_FIELDS = ("loss.", "masking.")
# Free to change between starts: compute and memory settings that leave the math alone.
_FREE_FIELDS = ("model.dtype", "model.remat")
CONFIG_RECORD = "config.json"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_and_record(config: ml_collections.ConfigDict, workdir: str, resuming: bool,
                     mode: str) -> None:
    """Compares `config` with the one recorded in `<workdir>/config.json` when the workdir holds
    a run (`resuming`), raising ConfigError naming every field that would change the model (and,
    when training on, the objective); then records `config` there (not in mode 'eval', which
    leaves the run's record alone). Written atomically: other processes may be reading it."""
    import jax  # imported here: config files import this module and need neither
    import tensorflow as tf

    from maeclip_jax.validation import ConfigError
    path = os.path.join(workdir, CONFIG_RECORD)
    now = json.loads(config.to_json_best_effort())
    if resuming and tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            before = _flat(json.load(f))
        after = _flat(now)
        guarded = _MODEL_FIELDS + (_OBJECTIVE_FIELDS if mode == "train" else ())
        changed = sorted(k for k in set(before) | set(after)
                         if before.get(k) != after.get(k) and k.startswith(guarded)
                         and not k.startswith(_FREE_FIELDS))
        if changed:
            lines = [f"- config.{k}={after.get(k)!r}, but the run was started with "
                     f"{before.get(k)!r}" for k in changed]
            fix = " ".join(f"--config.{k}={before.get(k)}" for k in changed)
            raise ConfigError(
                f"{workdir} holds a run of another model or objective ({path}):\n"
                + "\n".join(lines) + f"\nPass the run's values ({fix}) or use a new --workdir.")
    if mode != "eval" and jax.process_index() == 0:
        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            json.dump(now, f, indent=2, sort_keys=True)
        tf.io.gfile.rename(tmp, path, overwrite=True)
