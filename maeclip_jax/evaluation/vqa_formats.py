"""Converters from official VQA question files to the common format the VQA evaluator reads:
one JSON object per line with question_id, image (file name relative to an image folder),
question, answer, type (and `answers`, all annotators' answers, where the source has them).

  python -m maeclip_jax.evaluation.vqa_formats --format=clevr \
      --questions=CLEVR_v1.0/questions/CLEVR_val_questions.json --out=clevr_val.jsonl
  python -m maeclip_jax.evaluation.vqa_formats --format=vqav2 \
      --questions=v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations=v2_mscoco_val2014_annotations.json --out=vqav2_val.jsonl
  python -m maeclip_jax.evaluation.vqa_formats --format=gqa \
      --questions=testdev_balanced_questions.json --out=gqa_testdev.jsonl

Images: CLEVR `image_filename`; VQAv2 COCO_<subtype>_<image_id:012d>.jpg (subtype from the
questions file's `data_subtype`, e.g. val2014); GQA <imageId>.jpg.
"""
import argparse
import json
from typing import List


def _load(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} file {path!r}: {e}") from e


def _need(rec: dict, keys, where: str):
    for k in keys:
        if k not in rec:
            raise ValueError(f"{where}: record has no {k!r} field (has {sorted(rec)})")


def from_clevr(questions_path: str) -> List[dict]:
    data = _load(questions_path, "CLEVR questions")
    if "questions" not in data:
        raise ValueError(f"{questions_path}: expected a JSON object with 'questions'")
    out = []
    for i, q in enumerate(data["questions"]):
        _need(q, ("image_filename", "question", "answer"), f"{questions_path} question {i}")
        prog = q.get("program") or []
        qtype = prog[-1].get("function", prog[-1].get("type", "all")) if prog else "all"
        out.append({"question_id": q.get("question_index", i), "image": q["image_filename"],
                    "question": q["question"], "answer": str(q["answer"]), "type": qtype})
    return out


def from_vqav2(questions_path: str, annotations_path: str) -> List[dict]:
    qs = _load(questions_path, "VQAv2 questions")
    ann = _load(annotations_path, "VQAv2 annotations")
    if "questions" not in qs or "annotations" not in ann:
        raise ValueError(f"{questions_path} / {annotations_path}: expected 'questions' and "
                         "'annotations' lists")
    subtype = qs.get("data_subtype", "val2014")
    by_id = {}
    for i, a in enumerate(ann["annotations"]):
        _need(a, ("question_id", "multiple_choice_answer"), f"{annotations_path} annotation {i}")
        by_id[a["question_id"]] = a
    out = []
    for i, q in enumerate(qs["questions"]):
        _need(q, ("question_id", "image_id", "question"), f"{questions_path} question {i}")
        if q["question_id"] not in by_id:
            raise ValueError(f"{annotations_path}: no annotation for question_id {q['question_id']}")
        a = by_id[q["question_id"]]
        out.append({"question_id": q["question_id"],
                    "image": f"COCO_{subtype}_{int(q['image_id']):012d}.jpg",
                    "question": q["question"], "answer": a["multiple_choice_answer"],
                    "type": a.get("answer_type", "all"),
                    "answers": [x["answer"] for x in a.get("answers", [])]})
    return out


def from_gqa(questions_path: str) -> List[dict]:
    data = _load(questions_path, "GQA questions")
    if not isinstance(data, dict):
        raise ValueError(f"{questions_path}: expected a JSON object of question id -> question")
    out = []
    for qid, q in data.items():
        _need(q, ("imageId", "question", "answer"), f"{questions_path} question {qid}")
        out.append({"question_id": qid, "image": f"{q['imageId']}.jpg", "question": q["question"],
                    "answer": q["answer"],
                    "type": (q.get("types") or {}).get("structural", "all")})
    return out


def write_jsonl(records: List[dict], path: str) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", required=True, choices=["clevr", "vqav2", "gqa"])
    ap.add_argument("--questions", required=True)
    ap.add_argument("--annotations", help="VQAv2 only")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.format == "vqav2":
        if not a.annotations:
            ap.error("--format=vqav2 needs --annotations")
        recs = from_vqav2(a.questions, a.annotations)
    else:
        recs = from_clevr(a.questions) if a.format == "clevr" else from_gqa(a.questions)
    write_jsonl(recs, a.out)
    print(f"wrote {len(recs)} questions to {a.out}")


if __name__ == "__main__":
    main()
