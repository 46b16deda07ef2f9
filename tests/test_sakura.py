"""SAKURA: the converter on a clone laid out as ckyang1124/SAKURA (data/<track>/metadata.json)."""

import json
from collections import Counter

import pytest

from aqa.cli import main
from aqa.data.convert import SkipItem
from aqa.data.sources.sakura import convert_sakura, split_inline_options
from conftest import write_audio


def entry(single, single_answer, multi, multi_answer, label="dog", **kw):
    """One value of metadata.json (ckyang1124/SAKURA at a1fdb14), keyed by the clip's path."""
    return {"attribute_label": label, "single_instruction": single, "single_answer": single_answer,
            "multi_instruction": multi, "multi_answer": multi_answer, **kw}


ANIMAL = {
    "data/Animal/audio/dog28.wav": entry("Which animal is the source of the sound? (a) dog (b) crow (c) cow (d) rooster",
                                         "(a) dog", "What physical feature does it have? (a) Feathers (b) Scales "
                                         "(c) Claws (d) Horns", "(c) Claws"),
    # Bad: the single-hop answer names no option; the multi-hop answer's text is another option's.
    "data/Animal/audio/cat1.wav": entry("Which animal? (a) cat (b) dog", "(e) cat",
                                        "How does it move? (a) Walking (b) Flying", "(a) Flying", label="cat"),
}
EMOTION = {
    # The real Emotion track writes answers with a leading space.
    "data/Emotion/audio/e1.wav": entry("What emotion is expressed? (a) disgust (b) fear (c) sad (d) angry",
                                       " (d) angry", "Choose (a) sentence. (a) I am calm. (b) I am furious.",
                                       "(b) I am furious.", label="angry"),
    "data/Emotion/audio/e2.wav": entry("What emotion, with no options?", "(a) sad", "Which? (a) x (b) y", "(a) x"),
}


def clone(tmp_path, tracks):
    for track, meta in tracks.items():
        d = tmp_path / "SAKURA" / "data" / track
        d.mkdir(parents=True)
        (d / "metadata.json").write_text(json.dumps(meta, indent=4))
    return tmp_path / "SAKURA"


def test_two_questions_per_clip_as_subsets(tmp_path):
    root = clone(tmp_path, {"Animal": ANIMAL, "Emotion": EMOTION})
    write_audio(root / "data" / "Animal" / "audio" / "dog28.wav")
    rep = convert_sakura(root, show_progress=False)
    assert rep.inputs == 8
    recs = {r.id: r for r in rep.records}
    assert sorted(recs) == ["animal-dog28-multi", "animal-dog28-single", "emotion-e1-multi", "emotion-e1-single",
                            "emotion-e2-multi"]
    assert rep.subset_counts() == {"sakura-animal-multi": 1, "sakura-animal-single": 1, "sakura-emotion-multi": 2,
                                   "sakura-emotion-single": 1}
    r = recs["animal-dog28-multi"]
    assert r.question == "What physical feature does it have?" and r.choices == ["Feathers", "Scales", "Claws", "Horns"]
    assert r.answer == 2 and r.meta["hop"] == "multi-hop" and r.meta["attribute_label"] == "dog"
    assert recs["emotion-e1-single"].answer == 3
    m = recs["emotion-e1-multi"]  # "(a)" in the question's own words is not an option
    assert m.question == "Choose (a) sentence." and m.choices == ["I am calm", "I am furious"] and m.answer == 1
    assert recs["animal-dog28-single"].audio_path == (root / "data/Animal/audio/dog28.wav").resolve()
    assert "animal-dog28-single" not in rep.missing_audio and "emotion-e1-single" in rep.missing_audio
    assert Counter(e["kind"] for e in rep.errors) == {"answer-matches-no-choice": 2, "no-inline-options": 1}
    text = rep.summary()
    animal = root / "data" / "Animal" / "metadata.json"
    assert f"answer-matches-no-choice: {animal}['data/Animal/audio/cat1.wav'] multi-hop: answer '(a) Flying' names (a)" \
           in text


@pytest.mark.parametrize("instruction,question,options", [
    ("Q? (a) x (b) y", "Q?", ["x", "y"]),
    ("Pick (b) here: (a) one (b) two (c) three", "Pick (b) here:", ["one", "two", "three"]),
    ("Q (a) a (a) x (b) y", "Q (a) a", ["x", "y"]),
])
def test_inline_options(instruction, question, options):
    assert split_inline_options(instruction) == (question, options)


@pytest.mark.parametrize("instruction", ["Q? (a) only", "Q? (b) x (c) y", "no options"])
def test_inline_options_refused(instruction):
    with pytest.raises(SkipItem):
        split_inline_options(instruction)


def test_cli_needs_a_clone(tmp_path, capsys):
    root = clone(tmp_path, {"Animal": ANIMAL})
    assert main(["data", "sakura", str(root), "-o", str(tmp_path / "s.jsonl"), "--no-progress"]) == 0
    assert "2 records from 4 items" in capsys.readouterr().out
    assert main(["data", "sakura", str(tmp_path), "-o", str(tmp_path / "s.jsonl")]) == 2
    assert "no data/<track>/metadata.json" in capsys.readouterr().out
