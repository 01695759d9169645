"""The paper's rows as configs: one function builds every `configs/{model}_{regime}.py`.

Each config file is `get_config(arg)` -> `paper_config(model, regime, arg)`, so the eight files
differ only in their two names and their docstring. `arg`:
  - None / '': the paper-scale run (ViT-B/16 at 224 px, img2dataset shards, needs
    `--config.input.data`);
  - 'tiny': the same model and objectives on the built-in data at the README demo's sizes
    (ViT-mu/8 at 64 px, `config_lib.demo_budget`: batch 32, 1,600 steps): minutes on a 2-core
    CPU, as big_vision's `runlocal`. The pooling stays the paper's default (GAP). Use it as
    `--config=configs/clip_laion.py:tiny`.

Choices the poster does not state (documented here, each a config field): the CC12M budget
(32 epochs of 11.3M pairs at batch 8,192) and the 1.4B budget (13B examples at batch 32,768,
as CLIP's), the MAE/M3AE optimiser (the MAE recipe: AdamW (0.9, 0.95), weight decay 0.05, base
lr 1.5e-4 x batch / 256 at batch 4,096, trained for the same number of examples as CLIP), and
the decoder (8 blocks of width 512, MAE's ViT-B decoder) for MAE, M3AE and MAE-CLIP.
"""
import ml_collections

from maeclip_jax import config_lib

MODELS = ("mae", "m3ae", "clip", "maeclip")
REGIMES = ("cc12m", "laion")

# regime -> (examples seen, batch of the contrastive models, peak lr, warm-up steps)
_REGIME = {
    "cc12m": dict(examples=32 * 11_300_000, batch=8_192, lr=5e-4, warmup=2_000),
    "laion": dict(examples=13_000_000_000, batch=32_768, lr=5e-4, warmup=10_000),
}
_MAE_BATCH = 4_096


def _losses(c: ml_collections.ConfigDict, model: str) -> None:
    """Objective weights per model (objectives.py); everything else 0."""
    c.loss.contrastive = 1.0 if model in ("clip", "maeclip") else 0.0
    c.loss.reconstruction = 1.0 if model in ("mae", "maeclip") else 0.0
    c.loss.text_reconstruction = 0.0  # MAE-CLIP's optional text loss: off, as the default
    if model == "m3ae":
        c.loss.m3ae = 1.0
        c.loss.m3ae_text_weight = 0.5  # M3AE: image MSE + 0.5 x masked-token CE
    if model in ("mae", "m3ae"):
        del c.evals.zero_shot  # no text embedding: zero-shot does not apply


def paper_config(model: str, regime: str, arg=None) -> ml_collections.ConfigDict:
    """The config of one row of the paper's tables (or its 'tiny' built-in-data variant)."""
    if model not in MODELS:
        raise ValueError(f"model {model!r}: choose one of {MODELS}")
    if regime not in REGIMES:
        raise ValueError(f"regime {regime!r}: choose one of {REGIMES}")
    if arg not in (None, "", "tiny"):
        raise ValueError(f"config argument {arg!r}: use no argument (paper scale) or ':tiny'")
    c = config_lib.base_config()
    c.model.name = model
    _losses(c, model)
    if arg == "tiny":
        # The README demo's sizes and budget (configs/maeclip_tiny.py), on the built-in data.
        c.name = f"{model}_{regime}_tiny"
        return config_lib.demo_budget(c)

    r = _REGIME[regime]
    c.name = f"{model}_{regime}"
    c.input.source = "img2dataset"
    c.input.data = ""  # REQUIRED: glob / brace pattern of img2dataset .tar or .tfrecord shards
    c.input.image_size = 224
    c.input.max_text_len = 77
    c.input.tokenizer = "sentencepiece"
    c.input.tokenizer_model = ""  # REQUIRED: .model from python -m maeclip_jax.tools.train_tokenizer
    c.input.crop_scale = (0.2, 1.0) if model in ("mae", "m3ae") else (0.4, 1.0)  # MAE's / CLIP-like
    c.input.mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation
    c.input.std = (0.26862954, 0.26130258, 0.27577711)

    # update(), not assignment: the towers keep their unset override fields (config_lib).
    c.model.image.update(dict(variant="B/16", posemb="sincos2d", pooling="gap"))
    c.model.text.update(dict(variant="M", pooling="eot"))  # 12 x 512, 8 heads
    c.model.decoder.update(dict(width=512, depth=8, mlp_dim=2048, num_heads=16))
    c.model.text_decoder.update(dict(width=512, depth=2, mlp_dim=2048, num_heads=8))
    c.model.embed_dim = 512
    c.model.dtype = "bfloat16"
    c.masking.ratio = 0.75
    c.masking.text_ratio = 0.75

    if model in ("mae", "m3ae"):
        c.batch_size = _MAE_BATCH
        c.optimizer = dict(lr=1.5e-4 * _MAE_BATCH / 256, warmup_steps=r["warmup"] * 2,
                           min_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                           clip_grad_norm=0.0)  # 0: no clipping (MAE recipe)
    else:
        c.batch_size = r["batch"]
        c.optimizer = dict(lr=r["lr"], warmup_steps=r["warmup"], min_lr_ratio=0.0, b1=0.9,
                           b2=0.98, eps=1e-6, weight_decay=0.2, clip_grad_norm=1.0)
    # The paper's evaluation: ImageNet (TFDS imagenet2012, prepared in data_dir; checked at
    # start-up, before any training). The ridge probe on 100k training images monitors training
    # cheaply (as big_vision's); the reported logistic protocol: evals.<name>.protocol=logistic.
    # Zero-shot needs the 1,000 class names (TFDS only has WordNet ids): classes_file, one name
    # per line in label order. Without ImageNet: --config.evals.linear_probe.dataset=builtin.
    imagenet = dict(dataset="tfds:imagenet2012", data_dir="", test_split="validation")
    c.evals.linear_probe.update(dict(imagenet, train_split="train[:100000]"))
    if "zero_shot" in c.evals:
        c.evals.zero_shot.update(dict(imagenet, classes_file=""))  # REQUIRED with ImageNet
    c.total_steps = r["examples"] // c.batch_size
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2_000
    c.eval_every_steps = 10_000
    return c
