"""`aqa eval` on the tiny model: files, option orders mapped back, resume, bad audio."""

import json
import shutil

import numpy as np
import pytest

from aqa.cli import main
from aqa.data.audio import load_audio
from aqa.data.records import load_records
from aqa.eval.run import EvalSettings, evaluate
from aqa.eval.score import Query, option_orders, score_queries
from aqa.io import write_jsonl
from aqa.models.base import Example
from aqa.models.registry import load_backend
from aqa.prompts import question_text


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend(str(tiny_model))


def rows(d):
    return [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]


def test_score_files_and_metrics(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    m = evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl")), out, backend=backend,
                 progress=False)
    rs = rows(out)
    recs = load_records(synth_data / "dev.jsonl")
    assert [r["id"] for r in rs] == [r.id for r in recs]
    for r, rec in zip(rs, recs):
        assert r["choices"] == rec.choices and r["answer"] == rec.answer
        assert len(r["probs"]) == len(rec.choices) and abs(sum(r["probs"]) - 1) < 1e-4
        assert r["pred"] == int(np.argmax(r["probs"])) and r["correct"] == (r["pred"] == rec.answer)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == len(recs) and saved["weighted_mean"]["value"] == m["weighted_mean"]["value"]
    assert abs(m["weighted_mean"]["value"] - np.mean([r["correct"] for r in rs])) < 1e-6


def test_shuffled_orders_are_mapped_back(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    s = EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), shuffles=3)
    evaluate(s, out, backend=backend, limit=4, progress=False)
    rec = load_records(synth_data / "dev.jsonl")[0]
    row = rows(out)[0]
    orders = option_orders(rec, 3, 0)
    assert orders[0] == list(range(len(rec.choices))) and len({tuple(o) for o in orders}) > 1
    audio = load_audio(rec.audio_path, max_seconds=backend.audio_seconds).samples
    per = []
    for o in orders:  # one query at a time, by hand
        shown = [rec.choices[j] for j in o]
        (p,) = score_queries(backend, [Query(0, o, shown, Example(audio, question_text(rec.question, shown)))])
        per.append(p)
        # The probability of an option travels with its text, not its position.
        q = score_queries(backend, [Query(0, list(range(len(o))), shown,
                                          Example(audio, question_text(rec.question, shown)))])[0]
        assert np.allclose(p, [q[o.index(i)] for i in range(len(o))], atol=1e-6)
    assert np.allclose(row["probs"], np.mean(np.exp(per), axis=0), atol=1e-5)
    assert np.allclose(np.exp(row["logprobs"]), np.mean(np.exp(per), axis=0), atol=1e-9)
    assert row["shuffle_preds"] == [int(np.argmax(p)) for p in per]
    assert "shuffles" in json.loads((out / "metrics.json").read_text())


def test_resume_skips_done_items(tiny_model, synth_data, tmp_path, backend):
    out = tmp_path / "ev"
    s = EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"))
    evaluate(s, out, backend=backend, limit=3, progress=False)
    first = rows(out)
    # A run killed mid-write leaves a partial line; the resume drops it.
    with open(out / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "half')
    evaluate(s, out, backend=backend, progress=False)
    again = rows_tolerant(out)
    ids = [r["id"] for r in again]
    assert len(ids) == len(set(ids)) == len(load_records(synth_data / "dev.jsonl"))
    assert again[:3] == first
    with pytest.raises(ValueError, match="other settings"):
        evaluate(EvalSettings(str(tiny_model), None, str(synth_data / "dev.jsonl"), mode="generate"), out,
                 backend=backend, progress=False)


def rows_tolerant(d):
    from aqa.eval.metrics import load_predictions

    return load_predictions(d)


def test_generate_mode_and_bad_audio(tiny_model, synth_data, tmp_path):
    d = tmp_path / "ds"
    shutil.copytree(synth_data / "wav", d / "wav")
    recs = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:4]
    (d / "wav" / "empty.wav").write_bytes(b"")
    recs[1]["audio"] = "wav/empty.wav"
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model), "--data", str(d / "dev.jsonl"), "-o", str(out),
                 "--mode", "generate", "--max-new-tokens", "3"]) == 0
    rs = rows(out)
    assert len(rs) == 3 and all("raw" in r and r["probs"] is None for r in rs)
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["id"] == recs[1]["id"] and skipped[0]["kind"] == "empty"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_skipped"] == 1
    unparsed = [json.loads(x) for x in (out / "unparsed.jsonl").read_text().splitlines()]
    assert {u["id"] for u in unparsed} == {r["id"] for r in rs if r["pred"] is None}


def test_grouping_by_length_changes_no_prediction(tiny_model, synth_data, tmp_path, backend):
    import numpy as np

    from aqa.data.audio import write_wav

    # Clips of different lengths, listed longest-short-long so that grouping reorders them.
    d = tmp_path / "ds"
    recs = [json.loads(x) for x in (synth_data / "dev.jsonl").read_text().splitlines()][:6]
    for i, r in enumerate(recs):
        a = load_audio(synth_data / r["audio"]).samples
        cut = [2.0, 0.4, 1.7, 0.6, 1.9, 0.3][i]
        write_wav(d / f"c{i}.wav", a[: int(cut * 16000)] + np.float32(0))
        r["audio"] = f"c{i}.wav"
    write_jsonl(d / "dev.jsonl", recs)
    s = EvalSettings(str(tiny_model), None, str(d / "dev.jsonl"))
    evaluate(s, tmp_path / "g", backend=backend, progress=False, batch_size=2, group_by_length=True)
    evaluate(s, tmp_path / "u", backend=backend, progress=False, batch_size=2, group_by_length=False)
    g, u = rows(tmp_path / "g"), rows(tmp_path / "u")
    assert [r["id"] for r in g] != [r["id"] for r in u]  # the order of work changed ...
    by_id = {r["id"]: r for r in u}
    for r in g:  # ... the answers did not
        assert np.allclose(r["probs"], by_id[r["id"]]["probs"], atol=1e-5) and r["pred"] == by_id[r["id"]]["pred"]
