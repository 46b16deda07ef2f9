"""MMAU's full test split (mmau-test.json): the same items without answers, for evaluation and
export only."""

import json

from aqa.cli import main
from aqa.data.sources.mmau import convert_mmau
from aqa.data.records import read_records
from aqa.export import export_mmau
from bench_helpers import eval_dir


def item(id, choices, **kw):
    """An mmau-test.json item: mmau-test-mini.json's fields less ``answer``."""
    return {"id": id, "audio_id": f"./test-audios/{id}.wav", "question": "What?", "choices": choices, "dataset": "d",
            "task": "sound", "split": "test", "category": "c", "sub-category": "s", "difficulty": "easy", **kw}


def test_answerless_items_convert_evaluate_and_export(tmp_path, capsys):
    items = [item("t1", ["dog", "cat"]), item("t2", ["one", "three", "three"]), item("t3", ["x"]),
             item("t4", ["a", "b"], answer="z")]
    p = tmp_path / "mmau-test.json"
    p.write_text(json.dumps(items))
    rep = convert_mmau(p, show_progress=False)
    assert [r.id for r in rep.records] == ["t1", "t2"]
    assert all(r.answer is None and r.split == "test-unlabelled" and r.meta["split"] == "test" for r in rep.records)
    assert "original_answer" not in rep.records[0].meta
    # A labelled item in the same file is still checked against its options.
    assert {e["kind"] for e in rep.errors} == {"too-few-choices", "answer-matches-no-choice"}
    out = tmp_path / "mmau-test.jsonl"
    assert main(["data", "mmau", str(p), "-o", str(out), "--no-progress"]) == 0
    recs, errs = read_records(out, allow_outside_root=True)  # read back with the default: no answer allowed here
    assert not errs and len(recs) == 2
    d, _ = eval_dir(tmp_path, out, lambda r: 1)
    res = export_mmau(d, p, tmp_path / "pred.json")
    written = {x["id"]: x for x in json.loads((tmp_path / "pred.json").read_text())}
    assert written["t1"]["model_output"] == "cat" and written["t2"]["model_output"] == "three"
    # Only t4 carries an answer to score (unconverted, so written empty and scored wrong).
    assert written["t3"]["model_output"] == "" and (res.scored, res.empty, res.mmau_correct) == (1, 2, 0)
