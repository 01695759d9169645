r"""A small MAE-CLIP on the built-in dataset: the embedded default, minutes on a 2-core CPU.

Command:
  python -m maeclip_jax.main --config=configs/maeclip_tiny.py --workdir=/tmp/maeclip_tiny

It trains a ViT-mu/8 image tower (3 blocks, width 128, MAX pooling) and a 3-block text tower on
64x64 synthetic scenes, 1,600 steps of 32 (about 4-5 minutes here), logging the losses every 100
steps, then prints a table holding, among others (seed 0; chance 0.04 for 24 classes):
  linear_probe/top1   0.64    (ridge probe, built-in evaluation split, 24 colour x shape classes)
  zero_shot/top1      0.48
and retrieval recall@1/5/10 both ways (256 unseen scenes x 5 captions) and grounding (pointing
game, zero-shot segmentation mIoU; PNG overlays in <workdir>/grounding/). It writes results.json
and results.md (the paper's table layout) into the workdir.
Re-running the same command with the same workdir resumes, or just re-evaluates a finished run.

`--config=configs/maeclip_tiny.py:full` adds the heavier evaluators: the reported linear-probe
protocol (logistic regression) and VQA fine-tuning on generated questions. Evaluate a finished
run with them: `... --config=configs/maeclip_tiny.py:full --workdir=/tmp/maeclip_tiny --mode=eval`.
"""
from maeclip_jax import config_lib


def get_config(arg=None):
    c = config_lib.demo_budget(config_lib.base_config())
    c.name = "maeclip_tiny"
    # MAX pooling: the paper's pooling ablation finds it better for the probe and zero-shot;
    # here the objects cover a few of the 64 patches and averaging dilutes them.
    c.model.image.pooling = "max"
    # Every field the evaluators read is listed with a typed default, so that any of them can be
    # set on the command line ('' / 0 = unset); see maeclip_jax/evaluation/*.py.
    # retrieval.dataset: 'builtin', 'tfds:coco_captions' (split, data_dir, image_key, text_key)
    # or 'img2dataset:PATTERN' (Flickr30k shards; format, one caption per line of KEY.txt).
    c.evals.retrieval = dict(dataset="builtin", num_images=256, captions_per_image=5,
                             batch_size=256, split="", data_dir="", image_key="image",
                             text_key="captions/text", format="auto")
    c.evals.grounding = dict(num_images=128, num_pictures=4, batch_size=128, threshold=0.5,
                             layer="", weighting="channel")
    if arg == "full":
        c.evals.linear_probe_logistic = dict(c.evals.linear_probe.to_dict(), type="linear_probe",
                                             protocol="logistic", num_examples=2048)
        c.evals.vqa = dict(dataset="builtin", test_file="", image_dir="", num_train_images=2048,
                           num_test_images=512, questions_per_image=3, steps=500, batch_size=64,
                           eval_batch_size=256, lr=3e-4, warmup_steps=30, weight_decay=1e-4,
                           freeze_towers=False,
                           head=dict(width=128, depth=2, num_heads=4, mlp_dim=512))
    elif arg:
        raise ValueError(f"configs/maeclip_tiny.py: unknown argument {arg!r}; use ':full' or none")
    return c
