"""End to end: the main job trains, evaluates, writes results, resumes, and stops on NaN."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from maeclip_jax import train


def test_train_evaluate_then_rerun_reports_the_same_without_training(tmp_path, caplog):
    config = tiny_config(total_steps=6, checkpoint_every_steps=3, log_every_steps=3)
    res = train.train_and_evaluate(config, str(tmp_path))
    on_disk = json.load(open(tmp_path / "results.json"))
    assert on_disk["step"] == 6 and on_disk["config"] == "test"
    for key in ("linear_probe/top1", "zero_shot/top1", "zero_shot/top5"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))

    caplog.clear()
    with caplog.at_level("INFO"):
        again = train.train_and_evaluate(config, str(tmp_path))
    assert again == res
    assert "compiled the train step" not in caplog.text  # nothing was trained again
    assert "resumed from checkpoint at step 6" in caplog.text


def test_a_workdir_remembers_its_model_and_refuses_another_and_init_mode_needs_a_new_one(tmp_path):
    from maeclip_jax import validation
    config = tiny_config(total_steps=2, checkpoint_every_steps=2, log_every_steps=2,
                         **{"model.image.pooling": "gap", "evals": {}})
    train.train_and_evaluate(config, str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["model"]["image"]["pooling"] == "gap"
    # Pooling has no parameters: without the record, MAX would silently evaluate a GAP run.
    other = tiny_config(total_steps=2, **{"model.image.pooling": "max", "evals": {}})
    for mode in ("eval", "train"):
        with pytest.raises(validation.ConfigError, match=r"(?s)config\.model\.image\.pooling='max', "
                           r"but the run was started with 'gap'.*--config\.model\.image\."
                           r"pooling=gap"):
            train.train_and_evaluate(other, str(tmp_path), mode=mode)
    # --mode=init evaluates the untrained model, in a new workdir only.
    with pytest.raises(validation.ConfigError, match=r"(?s)--mode=init.*holds a trained run \(step 2\)"):
        train.train_and_evaluate(config, str(tmp_path), mode="init")
    fresh = tmp_path / "init"
    res = train.train_and_evaluate(tiny_config(), str(fresh), mode="init")
    assert res["step"] == 0 and 0.0 <= res["linear_probe/top1"] <= 1.0
    assert not (fresh / "checkpoints").exists() or not os.listdir(fresh / "checkpoints")


def test_the_config_record_guards_the_model_always_and_the_objective_when_training_on(tmp_path):
    """The rules of check_and_record on a recorded config, without training (the test above
    runs them through the trainer)."""
    from maeclip_jax import config_lib, validation
    workdir = str(tmp_path)
    config = tiny_config(**{"model.image.pooling": "gap"})
    config_lib.check_and_record(config, workdir, resuming=False, mode="train")
    recorded = json.load(open(tmp_path / "config.json"))
    assert recorded["model"]["image"]["pooling"] == "gap"

    # The objective may change for an evaluation (which leaves the record alone), not when
    # training on.
    other = tiny_config(**{"model.image.pooling": "gap", "loss.reconstruction": 0.5})
    config_lib.check_and_record(other, workdir, resuming=True, mode="eval")
    assert json.load(open(tmp_path / "config.json")) == recorded
    with pytest.raises(validation.ConfigError, match=r"config\.loss\.reconstruction=0\.5"):
        config_lib.check_and_record(other, workdir, resuming=True, mode="train")
    # A model field is refused in every mode, each changed field named with its fix.
    other = tiny_config(**{"model.image.pooling": "gap", "input.image_size": 64,
                           "model.embed_dim": 16})
    with pytest.raises(validation.ConfigError, match=r"(?s)config\.input\.image_size=64.*"
                       r"config\.model\.embed_dim=16.*--config\.input\.image_size=32 "
                       r"--config\.model\.embed_dim=32"):
        config_lib.check_and_record(other, workdir, resuming=True, mode="eval")
    # The budget, the compute dtype and the evaluators are free to change; training on records
    # the new config.
    other = tiny_config(total_steps=4, **{"model.image.pooling": "gap", "evals": {},
                                          "model.dtype": "bfloat16"})
    config_lib.check_and_record(other, workdir, resuming=True, mode="train")
    assert json.load(open(tmp_path / "config.json"))["total_steps"] == 4
    # Tower sizes are recorded as the model uses them, not as the None that a size from the
    # variant ('test/8': width 32) leaves in the config.
    from maeclip_jax.data.tokenizer import get_tokenizer
    base = tiny_config(**{"model.image.pooling": "gap"})
    tok = get_tokenizer(base.input.tokenizer, base.input.max_text_len)
    sized = train.prepare_config(base, tok)
    assert (sized.model.image.width, sized.model.image.depth, sized.model.text.width) == (32, 1, 32)
    config_lib.check_and_record(sized, workdir, resuming=False, mode="train")
    wider = train.prepare_config(tiny_config(**{"model.image.pooling": "gap",
                                                "model.image.width": 64}), tok)
    with pytest.raises(validation.ConfigError, match=r"config\.model\.image\.width=64, but the "
                       r"run was started with 32"):
        config_lib.check_and_record(wider, workdir, resuming=True, mode="eval")
    # A new workdir (not resuming) is never compared.
    config_lib.check_and_record(tiny_config(**{"model.image.pooling": "max"}), workdir,
                                resuming=False, mode="train")


def test_main_reports_a_bad_config_in_one_line_without_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "maeclip_jax.main", f"--config={REPO}/configs/maeclip_tiny.py",
           f"--workdir={tmp_path}", "--config.model.image.pooling=avg"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""), cwd=REPO)
    assert p.returncode == 1
    assert "ConfigError: config.model.image.pooling='avg'; choose one of" in p.stderr
    assert "Traceback" not in p.stderr
    # A misspelt field fails while the flags are parsed (ml_collections raises a chained
    # KeyError / AttributeError there): one line too, naming the override and the near miss.
    p = subprocess.run(cmd[:-1] + ["--config.model.image.poolng=gap"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""),
                       cwd=REPO)
    assert p.returncode == 1
    assert ("ConfigError: --config.model.image.poolng=gap: the config has no field 'poolng' "
            "(did you mean 'pooling'?)") in p.stderr
    assert "Traceback" not in p.stderr


def test_eval_mode_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.train_and_evaluate(tiny_config(), str(tmp_path), mode="eval")


def test_nan_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path):
    config = tiny_config(total_steps=40, checkpoint_every_steps=2, log_every_steps=100)
    config.optimizer.lr = 1e30
    config.optimizer.clip_grad_norm = 0.0
    config.optimizer.warmup_steps = 0
    with pytest.raises(FloatingPointError, match=r"at step \d+.*Last good checkpoint: step") as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert "nan" in str(e.value).lower() or "inf" in str(e.value).lower()


MAIN_FLAGS = ["--config.total_steps=40", "--config.checkpoint_every_steps=4",
              "--config.log_every_steps=4", "--config.batch_size=16",
              "--config.input.image_size=32", "--config.model.image.variant=test/8",
              "--config.model.text.variant=test", "--config.model.decoder.width=32",
              "--config.model.decoder.mlp_dim=64", "--config.model.decoder.num_heads=2",
              "--config.model.embed_dim=32", "--config.evals.linear_probe.num_examples=64",
              "--config.evals.zero_shot.num_examples=32"]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes(tmp_path):
    cmd = [sys.executable, "-m", "maeclip_jax.main", f"--config={REPO}/configs/maeclip_tiny.py",
           f"--workdir={tmp_path}"] + MAIN_FLAGS
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [d for d in (os.listdir(ckpts) if ckpts.exists() else []) if d.isdigit()]
        if done and max(map(int, done)) >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results.json").exists(), "killed too late: training had finished"
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from checkpoint at step" in out.stderr
    step = int(out.stderr.split("resumed from checkpoint at step ")[1].split()[0])
    assert 8 <= step < 40
    assert json.load(open(tmp_path / "results.json"))["step"] == 40
    assert "zero_shot/top1" in out.stdout and "linear_probe/top1" in out.stdout
