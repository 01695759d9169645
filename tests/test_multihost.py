"""Real multi-process training: 2 processes x 2 fake CPU devices on 127.0.0.1 (gloo) give the
same losses as 1 process with 4 devices; only process 0 writes metrics; checkpoints are written
cooperatively."""
import glob
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

# CLIP: its loss does not depend on the order of the examples within the global batch (the two
# runs assemble the same examples in another order: process p reads examples p, p+2, ...).
FLAGS = ["--config.model.name=clip", "--config.loss.reconstruction=0", "--config.total_steps=4",
         "--config.checkpoint_every_steps=2", "--config.log_every_steps=1",
         "--config.batch_size=16", "--config.input.image_size=32",
         "--config.model.image.variant=test/8", "--config.model.text.variant=test",
         "--config.model.embed_dim=32", "--config.evals.linear_probe.num_examples=32",
         "--config.evals.zero_shot.num_examples=32", "--config.mesh.data=2",
         "--config.mesh.fsdp=2", "--config.sharding.fsdp_min_size=0"]


def _env(devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def _cmd(workdir):
    return [sys.executable, "-m", "maeclip_jax.main", f"--config={REPO}/configs/maeclip_tiny.py",
            f"--workdir={workdir}"] + FLAGS


def _losses(workdir):
    import tensorflow as tf
    files = glob.glob(os.path.join(workdir, "events.out.tfevents*"))
    assert len(files) == 1, files  # only process 0 writes metrics
    out = {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
        for v in event.summary.value:
            if v.tag == "loss":
                out[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    one = tmp_path / "one"
    subprocess.run(_cmd(one), env=_env(4), check=True, timeout=600, capture_output=True)
    two = tmp_path / "two"
    port = _free_port()
    procs = [subprocess.Popen(_cmd(two) + [f"--coordinator_address=127.0.0.1:{port}",
                                           "--num_processes=2", f"--process_id={i}"],
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "2 processes, 4 devices" in outs[0]
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)],
                               rtol=2e-5)
    assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]
