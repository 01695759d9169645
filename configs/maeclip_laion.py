r"""MAE-CLIP at the paper's large scale: ViT-B/16 at 224 px, 12-layer width-512 text tower, 75%
masking, global batch 32,768, AdamW with warm-up and cosine decay, on LAION-style image-text
shards written by img2dataset.

Command (needs the training data, e.g. LAION-400M as img2dataset shards):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py --workdir=gs://BUCKET/maeclip_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar'

Without --config.input.data it stops at once and says which data is missing and how to give it.
The budget: 13B examples seen (about 400k steps at 32k), as the paper's 1.4B-pair regime.
"""
from maeclip_jax import config_lib


def get_config(arg=None):
    del arg
    c = config_lib.base_config()
    c.name = "maeclip_laion"
    c.batch_size = 32_768
    c.total_steps = 400_000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval_every_steps = 10_000

    c.input.source = "img2dataset"
    c.input.data = ""  # REQUIRED: glob / brace pattern of img2dataset .tar or .tfrecord shards
    c.input.image_size = 224
    c.input.max_text_len = 77
    c.input.mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation
    c.input.std = (0.26862954, 0.26130258, 0.27577711)

    c.model.name = "maeclip"
    c.model.image = dict(variant="B/16", posemb="sincos2d", pooling="gap")
    c.model.text = dict(variant="M", pooling="eot", vocab_size=None)  # 12 x 512, 8 heads
    c.model.decoder = dict(width=512, depth=8, mlp_dim=2048, num_heads=16)
    c.model.embed_dim = 512
    c.model.dtype = "bfloat16"

    c.masking.ratio = 0.75
    c.loss.contrastive = 1.0
    c.loss.reconstruction = 1.0
    c.optimizer = dict(lr=5e-4, warmup_steps=10_000, min_lr_ratio=0.0, b1=0.9, b2=0.98,
                       eps=1e-6, weight_decay=0.2, clip_grad_norm=1.0)
    return c
