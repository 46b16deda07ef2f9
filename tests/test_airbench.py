"""AIR-Bench Foundation: the converter on a Foundation_meta.json in its format, the export for
score_foundation.py."""

import json
from collections import Counter

import pytest

from aqa.cli import main
from aqa.data.sources.airbench import convert_airbench
from aqa.export import airbench_letter, airbench_truth, export_airbench
from bench_helpers import eval_dir
from conftest import write_audio


def item(uid, task, choices, answer, dataset="ds", path=None):
    """One item with Foundation_meta.json's fields (OFA-Sys/AIR-Bench at d5c1bdf)."""
    d = {"path": path or f"{uid}.wav", "question": f"Q{uid}?", "answer_gt": answer, "task_name": task,
         "dataset_name": dataset, "uniq_id": uid}
    d.update(dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), choices)))
    return d


GOOD = [item(1, "Speaker_Gender_Recognition", ["male", "female"], "female", dataset="VoxCeleb1"),
        item(2, "Audio_Grounding", ["[0.1, 2.0]", "[3.0, 4.5]", "[5.0, 6.0]", "[0.0, 9.0]"], "[3.0, 4.5]",
             dataset="AudioGrounding"),
        item(3, "Sound_AQA", ["dog", "cat", "dog ", "bird"], "dog ", dataset="clotho")]


def write_meta(tmp_path, items):
    p = tmp_path / "Foundation_meta.json"
    p.write_text(json.dumps(items))
    return p


def test_converter(tmp_path):
    # Audio_Grounding's clip is a .flac on disk though its path says .wav (Inference_Foundation.py).
    write_audio(tmp_path / "Audio_Grounding_AudioGrounding" / "2.flac", fmt="FLAC")
    write_audio(tmp_path / "Speaker_Gender_Recognition_VoxCeleb1" / "1.wav")
    bad = [item(4, "Sound_AQA", ["a", "b"], "c"), {k: v for k, v in item(5, "T", ["a", "b"], "a").items()
                                                   if k != "task_name"},
           dict(item(6, "T", ["a", "b", None, "d"], "a"), choice_c=None), item(1, "T", ["a", "b"], "a"), "text"]
    p = write_meta(tmp_path, GOOD + bad)
    rep = convert_airbench(p, show_progress=False)
    assert [r.id for r in rep.records] == ["1", "2", "3"]
    assert rep.subset_counts() == {"airbench-Audio_Grounding_AudioGrounding": 1, "airbench-Sound_AQA_clotho": 1,
                                   "airbench-Speaker_Gender_Recognition_VoxCeleb1": 1}
    assert rep.missing_audio == ["3"]
    r3 = {r.id: r for r in rep.records}["3"]
    assert r3.choices == ["dog", "cat", "bird"] and r3.answer == 0 and r3.meta["choice_index_of"] == [0, 1, 0, 2]
    assert Counter(e["kind"] for e in rep.errors) == {"answer-matches-no-choice": 1, "missing-field": 2,
                                                     "duplicate-id": 1, "not-an-object": 1}
    assert f"missing-field: {p}[5] (id 6): a choice between two others is missing" in rep.summary()


# score_foundation.py at d5c1bdf: the letter it reads from a response.
# Its first-character rule reads "Answer: b" as A and "Based on the audio, C." as B: free text
# is scored by its first letter, which is why the export writes the bare letter.
LETTER_RULE = [("A", "A"), ("B.", "B"), ("  C\n", "C"), ("D) bird", "D"), ("The answer is C.", "C"),
               ("Answer: b", "A"), ("Based on the audio, C.", "B"), ("the answer is c", None), ("", None),
               ("None", None), ("E", None), ("x", None), ("\nA", "A")]


@pytest.mark.parametrize("response,letter", LETTER_RULE)
def test_airbench_letter_rule(response, letter):
    assert airbench_letter(response) == letter


def test_airbench_truth_is_the_first_exact_choice():
    assert airbench_truth(item(1, "T", ["dog", "cat", "dog", "bird"], "dog")) == "A"
    assert airbench_truth(item(1, "T", ["dog", "cat"], "cat")) == "B"
    assert airbench_truth(item(1, "T", ["dog", "cat"], "cat ")) is None  # the scorer stops here


def test_export(tmp_path, capsys):
    p = write_meta(tmp_path, GOOD + [item(7, "Sound_AQA", ["x", "y"], "y ")])
    data = tmp_path / "air.jsonl"
    assert main(["data", "airbench", str(p), "-o", str(data), "--no-progress"]) == 0
    picks = {"1": 1, "2": 0, "3": 0, "7": 1}
    d, _ = eval_dir(tmp_path, data, lambda r: picks[r.id])
    out = tmp_path / "Foundation_result_modelx.jsonl"
    res = export_airbench(d, p, out)
    rows = {x["uniq_id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert list(rows[1]) == ["path", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer_gt",
                             "task_name", "dataset_name", "response", "uniq_id"]
    assert rows[1]["choice_c"] is None and rows[1]["response"] == "B"
    assert rows[2]["response"] == "A"
    # "dog " is C in the file, but the merged pick writes the first letter of the answer's text.
    assert rows[3]["response"] == "C"
    assert rows[7]["response"] == ""  # its answer_gt is no choice's exact text: a letter would stop the scorer
    assert (res.scored, res.aqa_correct, res.scorer_correct, res.empty) == (3, 2, 2, 1)
    assert main(["export", "airbench", str(d), "--questions", str(p), "-o", str(out)]) == 0
    assert "would stop score_foundation.py" in capsys.readouterr().out
