"""The benchmark scripts run from their documented command lines (tiny sizes) and write the JSON
their README tables come from: a config change that breaks a benchmark fails here, not on the
day someone needs the numbers. Timings themselves are never asserted."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.mark.slow
def test_train_step_benchmark_writes_rows_ratio_and_memory(tmp_path):
    out = tmp_path / "train_step.json"
    r = _run(["benchmarks/train_step.py", "--models=clip,maeclip", "--widths=64", "--depth=1",
              "--batch=8", "--steps=1", "--sections=steps,memory", "--memory_batches=8",
              "--matmul_n=256", f"--out={out}"], tmp_path)
    res = json.loads(out.read_text())
    assert {row["model"] for row in res["rows"]} == {"clip", "maeclip"}
    for row in res["rows"]:
        assert row["step_s"] > 0 and row["flops_per_step"] > 0 and row["frac_matmul_f32"] > 0
    (ratio,) = res["ratio"]
    # MAE-CLIP adds a masked pass and a decoder to CLIP's step: more FLOPs, never fewer.
    assert ratio["flop_ratio"] > 1.0
    assert {m["remat"] for m in res["memory"]} == {"none", "full"}
    assert "time_over_flop" in r.stdout


@pytest.mark.slow
def test_input_pipeline_benchmark_compares_ours_with_bare_tf_data(tmp_path):
    out = tmp_path / "input_pipeline.json"
    _run(["benchmarks/input_pipeline.py", "--num_examples=64", "--per_shard=32",
          "--source_size=64", "--sizes=32", "--batch=8", "--batches=2", "--warmup=1",
          "--rounds=1", f"--out={out}"], tmp_path)
    res = json.loads(out.read_text())
    names = {row["pipeline"] for row in res["rows"]}
    assert names == {"bare (tfrecord)", "ours (tfrecord)", "ours (tar)"}
    assert all(row["examples_per_sec"] > 0 for row in res["rows"])
