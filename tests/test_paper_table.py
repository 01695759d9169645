"""experiments/paper_table.py: the tables it writes from recorded runs (no training here)."""
import json
import os
import sys

import numpy as np

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "experiments"))
import paper_table  # noqa: E402


def _run(model, pooling, seed, lp, zs=None, init=False):
    res = {"linear_probe/top1": lp, "step": 0 if init else 8}
    if zs is not None:
        res["zero_shot/top1"] = zs
    return {"model": model, "pooling": pooling, "seed": seed, "init": init, "seconds": 10.0,
            "results": res}


def test_tables_hold_mean_and_sample_std_over_seeds_and_the_untrained_baseline():
    runs = [_run("clip", "gap", 0, 0.40, 0.30), _run("clip", "gap", 1, 0.50, 0.20),
            _run("clip", "gap", 0, 0.31, 0.05, init=True),
            _run("clip", "gap", 1, 0.33, 0.04, init=True)]
    agg = paper_table.aggregate(runs, ["clip"], ["gap"])
    cell = agg["clip/gap"]
    assert cell["linear_probe_top1"] == [0.40, 0.50] and cell["zero_shot_top1"] == [0.30, 0.20]
    assert cell["linear_probe_top1_init"] == [0.31, 0.33]
    md = paper_table.markdown(agg, ["clip"], ["gap"], {"steps": 8, "batch_size": 4,
                                                       "seeds": [0, 1], "host": "test"})
    lp_std = 100 * np.std([0.40, 0.50], ddof=1)  # 7.07
    assert f"| CLIP | 45.0 ± {lp_std:.1f} | 32.0 ± {100 * np.std([.31, .33], ddof=1):.1f} |" in md
    assert "| GAP | 25.0 ± 7.1 | 45.0 ± 7.1 |" in md  # zero-shot excludes the untrained runs
    assert "GAP, untrained" in md


def test_reuse_takes_recorded_runs_without_training(tmp_path):
    runs = [_run("mae", "gap", 0, 0.27)]
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"meta": {"steps": 8, "batch_size": 4}, "runs": runs}))
    out = tmp_path / "table"
    assert paper_table.main([f"--workdir={tmp_path / 'w'}", f"--out={out}", "--seeds=0",
                             "--models=mae", "--poolings=gap", "--steps=8", "--batch_size=4",
                             "--no_init", f"--reuse={prev}"]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["table"]["mae/gap"]["linear_probe_top1"] == [0.27]
    assert not (tmp_path / "w").exists()  # nothing was trained
