"""results.md: the metrics of results.json in the layout of the paper's tables (one row per
run, column groups per task, accuracies and recalls in percent with one decimal), followed by
every metric in full; and results.json itself (a flat metric -> value mapping). Both are
written through tf.io.gfile, so a gs:// workdir works."""
import json
import os
from typing import List, Tuple

# (group, column header, metric-name suffix, evaluator type). A column is shown when any
# evaluator of that type ran or was skipped; its cell holds 'n/a' when the model lacks what the
# evaluator needs (e.g. zero-shot for MAE).
COLUMNS: List[Tuple[str, str, str, str]] = [
    ("Classification", "LP top-1", "top1", "linear_probe"),
    ("Classification", "ZS top-1", "top1", "zero_shot"),
    ("Classification", "ZS top-5", "top5", "zero_shot"),
    ("Retrieval", "I→T R@1", "i2t_r@1", "retrieval"),
    ("Retrieval", "I→T R@5", "i2t_r@5", "retrieval"),
    ("Retrieval", "I→T R@10", "i2t_r@10", "retrieval"),
    ("Retrieval", "T→I R@1", "t2i_r@1", "retrieval"),
    ("Retrieval", "T→I R@5", "t2i_r@5", "retrieval"),
    ("Retrieval", "T→I R@10", "t2i_r@10", "retrieval"),
    ("VQA", "acc.", "top1", "vqa"),
    ("Grounding", "point top-1", "pointing_top1", "grounding"),
    ("Grounding", "point top-5", "pointing_top5", "grounding"),
    ("Grounding", "seg mIoU", "seg_miou", "grounding"),
]


def format_value(v) -> str:
    """4 decimals for metrics; small hyper-parameters (a ridge l2 of 1e-6) keep their digits."""
    if isinstance(v, float):
        return f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"
    return str(v)

def _cell(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def markdown(results: dict, evals_config: dict, not_applicable: dict = None) -> str:
    """results: {'<eval name>/<metric>': value, 'step', 'config'}; evals_config: config.evals
    as a dict (gives each evaluator name's type)."""
    not_applicable = not_applicable or {}
    header = ["run", "step"]
    cells = [str(results.get("config", "")), str(results.get("step", ""))]
    groups = []
    # Columns in the paper's order (COLUMNS), whatever the order of config.evals.
    kinds = {name: (cfg or {}).get("type", name) for name, cfg in evals_config.items()}
    for group, col, suffix, k in COLUMNS:
        for name, kind in sorted(kinds.items(), key=lambda nk: nk[0] != nk[1]):
            key = f"{name}/{suffix}"
            if k != kind or (key not in results and name not in not_applicable):
                continue
            # A second evaluator of one type (e.g. a logistic probe) is labelled by its name.
            header.append(col if name == kind else f"{name} {col}")
            groups.append(group)
            cells.append(_cell(results[key]) if key in results else "n/a")
    abbrevs = [a for a in ("LP = linear probe", "ZS = zero-shot")
               if any(a[:2] in h.split() for h in header)]
    legend = f" ({', '.join(abbrevs)})" if abbrevs else ""
    lines = [f"Results of `{results.get('config', '')}` at step {results.get('step', '')}; "
             "in percent. Column groups, left to right: "
             + ", ".join(dict.fromkeys(groups)) + legend + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join(cells) + " |", ""]
    for n, why in not_applicable.items():
        lines.append(f"- `{n}`: n/a, {why}.")
    lines += ["", "All metrics:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {format_value(v)} |"
              for k, v in sorted(results.items()) if not isinstance(v, dict)]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    import tensorflow as tf
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def write_markdown(workdir: str, results: dict, evals_config: dict,
                   not_applicable: dict = None) -> str:
    """Writes <workdir>/results.md. `not_applicable`: {name: reason} of the evaluators that
    were skipped for this model (`evaluation.not_applicable`), shown as n/a."""
    path = os.path.join(workdir, "results.md")
    _write(path, markdown(results, evals_config, not_applicable))
    return path


def write_json(workdir: str, results: dict) -> str:
    """Writes <workdir>/results.json: the flat {metric: value} mapping (plus step, config)."""
    nested = sorted(k for k, v in results.items() if isinstance(v, dict))
    if nested:
        raise ValueError(f"results.json must map metrics to values; {nested} hold dicts")
    path = os.path.join(workdir, "results.json")
    _write(path, json.dumps(results, indent=2, sort_keys=True))
    return path
