r"""MAE-CLIP at the paper's large scale: ViT-B/16 at 224 px, 12-layer width-512 text tower, 75%
masking, global batch 32,768, AdamW with warm-up and cosine decay, on LAION-style image-text
shards written by img2dataset.

Command (needs the training data, e.g. LAION-400M as img2dataset shards):
  python -m maeclip_jax.main --config=configs/maeclip_laion.py --workdir=gs://BUCKET/maeclip_laion \
      --config.input.data='gs://BUCKET/laion400m/{00000..41407}.tar'

Without --config.input.data it stops at once and says which data is missing and how to give it.
The budget: 13B examples seen (about 400k steps at 32k), as the paper's 1.4B-pair regime.

Preparing the data (img2dataset, from a parquet of url + caption):
  img2dataset --url_list=laion400m-meta --input_format=parquet --url_col=URL \
      --caption_col=TEXT --output_format=webdataset --output_folder=gs://BUCKET/laion400m \
      --image_size=256 --resize_mode=keep_ratio --processes_count=16 --thread_count=64
(--output_format=tfrecord writes .tfrecord shards instead; both are read.) Then a tokenizer:
  python -m maeclip_jax.tools.train_tokenizer --input='gs://BUCKET/laion400m/{00000..00099}.tar' \
      --output=gs://BUCKET/tokenizers/laion_32k --vocab_size=32000
and add --config.input.tokenizer_model=gs://BUCKET/tokenizers/laion_32k.model.

Data fields (config.input):
  source        'img2dataset' (or 'tfds', 'mixture', 'builtin')
  data          glob / brace pattern(s) of shards, ';'-separated, local or gs://
  format        'auto' (by extension), 'tar' or 'tfrecord'
  tokenizer     'sentencepiece' with tokenizer_model = the .model file
  crop_scale    random-resized-crop area range; crop_ratio, flip
  shuffle_buffer, cycle_length   raw-record shuffle buffer; shards read at once
  first_batch_timeout_s          stop with an error naming a shard if nothing arrives
A mixture: --config.input.source=mixture and, in a config file,
  c.input.mixture = {"laion": {"source": "img2dataset", "data": "...", "weight": 0.8},
                     "cc12m": {"source": "img2dataset", "data": "...", "weight": 0.2}}
Training logs `data/skipped`: broken examples (corrupt JPEG, empty / non-UTF-8 caption,
truncated tar, empty shard) dropped so far by this process.
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
    c.input.tokenizer = "sentencepiece"
    c.input.tokenizer_model = ""  # REQUIRED: .model from python -m maeclip_jax.tools.train_tokenizer
    c.input.crop_scale = (0.4, 1.0)  # between MAE's (0.2, 1) and CLIP's near-full crops
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
