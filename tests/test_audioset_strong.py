import json
import random
from collections import Counter

import pytest

from aqa.data.sources.audioset_strong import DEFAULT_TYPES, clean_events, clip_rng, convert_strong, make_questions
from aqa.data.events import Event, merge_occurrences, onsets_and_counts, read_labels, read_strong_tsv
from aqa.data.question_types import GENERATORS, QUESTION_TYPES, drafts
from aqa.data.records import read_records, write_records
from aqa.data.spoken import format_count, format_duration, format_times, parse_count, parse_duration, spoken_names
from conftest import tone, write_audio

LABELS = {
    "/m/dog": "Dog",
    "/m/horn": "Vehicle horn, car horn, honking",
    "/m/noise": "Noise",
    "/m/bird": "Bird",
    "/m/cat": "Cat",
    "/m/rain": "Rain",
    "/m/speech": "Speech",
    "/m/bell": "Bell",
    "/m/animal": "Animal",
}

# clipA: two overlapping dog events (one occurrence) plus a later one; a car horn heard once;
# a generic label under everything. clipB: only generic and unknown labels. clipC: no audio.
# clipD: a quick double bird (too close to count), and cat/dog starting 0.1 s apart.
TSV_ROWS = [
    "segment_id\tstart_time_seconds\tend_time_seconds\tlabel",
    "clipA_0\t1.0\t2.0\t/m/dog",
    "clipA_0\t1.8\t2.5\t/m/dog",
    "clipA_0\t4.0\t4.6\t/m/dog",
    "clipA_0\t3.0\t5.5\t/m/horn",
    "clipA_0\t0.0\t10.0\t/m/noise",
    "clipA_0\tabc\t1.0\t/m/dog",  # line 7: not a number
    "clipA_0\t2.0\t1.0\t/m/dog",  # line 8: offset before onset
    "too\tfew",  # line 9
    "clipB_1000\t0.0\t10.0\t/m/noise",
    "clipB_1000\t1.0\t2.0\t/m/unknown",
    "clipC_0\t1.0\t2.0\t/m/dog",
    "clipD_500\t0.0\t0.3\t/m/bird",
    "clipD_500\t0.35\t0.6\t/m/bird",
    "clipD_500\t5.0\t6.0\t/m/cat",
    "clipD_500\t5.1\t5.5\t/m/dog",
]


@pytest.fixture
def strong(tmp_path):
    tsv = tmp_path / "strong.tsv"
    tsv.write_text("\n".join(TSV_ROWS) + "\n")
    lab = tmp_path / "mid_to_display_name.tsv"
    lab.write_text("".join(f"{m}\t{n}\n" for m, n in LABELS.items()) + "a line without a tab\n")
    audio = tmp_path / "audio"
    write_audio(audio / "clipA_0.wav", tone(10.0))
    write_audio(audio / "clipB_1000.wav", tone(10.0))
    write_audio(audio / "clipD_500.flac", tone(10.0), fmt="FLAC")
    return tsv, lab, audio


def test_read_strong_tsv_reports_bad_lines(strong):
    tsv, lab, _ = strong
    problems = []
    clips = read_strong_tsv(tsv, problems=problems)
    assert list(clips) == ["clipA_0", "clipB_1000", "clipC_0", "clipD_500"]
    assert len(clips["clipA_0"]) == 5
    assert [p.split(":")[1] for p in problems] == ["7", "8", "9"]
    assert all(p.startswith(str(tsv)) for p in problems)
    lab_problems = []
    labels = read_labels(lab, problems=lab_problems)
    assert labels == LABELS and len(lab_problems) == 1 and ":10:" in lab_problems[0]


def test_clean_merges_and_drops():
    events = [Event("/m/dog", 1.0, 2.0), Event("/m/dog", 1.8, 2.5), Event("/m/dog", 2.5, 3.0),
              Event("/m/dog", 4.0, 4.6), Event("/m/noise", 0, 10), Event("/m/what", 1, 2)]
    dropped = Counter()
    clean = clean_events(events, LABELS, dropped=dropped)
    # touching (2.5 == 2.5) counts as one occurrence too
    assert clean == [Event("/m/dog", 1.0, 3.0), Event("/m/dog", 4.0, 4.6)]
    assert dropped["generic label"] == 1 and dropped["unknown label"] == 1
    assert dropped["merged into an overlapping event"] == 2
    assert clean_events(clean, LABELS) == clean  # idempotent


def test_merge_occurrences_nested_and_separate():
    events = [Event("/m/a", 5.0, 6.0), Event("/m/a", 1.0, 4.0), Event("/m/a", 2.0, 3.0),
              Event("/m/b", 1.5, 2.0)]
    assert merge_occurrences(events) == [Event("/m/a", 1.0, 4.0), Event("/m/b", 1.5, 2.0),
                                         Event("/m/a", 5.0, 6.0)]


def test_onsets_and_counts_merges_then_orders_by_first_onset():
    events = [Event("/m/b", 2.0, 3.0), Event("/m/a", 0.5, 1.0), Event("/m/a", 0.9, 1.5), Event("/m/a", 4.0, 5.0),
              Event("/m/c", 2.0, 2.5)]
    # /m/a's first two events overlap: one occurrence. /m/b and /m/c start together: the
    # shorter first occurrence comes first.
    assert list(onsets_and_counts(events).items()) == [("/m/a", (0.5, 2)), ("/m/c", (2.0, 1)), ("/m/b", (2.0, 1))]
    assert onsets_and_counts([]) == {}


def test_ontology_drops_overlapping_parent():
    onto = {"/m/animal": frozenset({"/m/dog", "/m/cat"}), "/m/dog": frozenset()}
    events = [Event("/m/animal", 0.9, 2.1), Event("/m/dog", 1.0, 2.0), Event("/m/cat", 5, 6)]
    clean = clean_events(events, LABELS, ontology=onto)
    assert {e.label for e in clean} == {"/m/dog", "/m/cat"}
    # a parent alone is a sound in its own right
    assert clean_events([Event("/m/animal", 0, 1)], LABELS, ontology=onto) == [Event("/m/animal", 0, 1)]


def test_spoken_names():
    names = spoken_names({"/a": "Vehicle horn, car horn, honking", "/b": "Dog",
                          "/c": "Music, rock", "/d": "Music", "/e": "TV static"})
    assert names["/a"] == "vehicle horn" and names["/b"] == "dog"
    assert names["/c"] == "music, rock" and names["/d"] == "music"  # would collide: full names
    assert names["/e"] == "TV static"


@pytest.mark.parametrize("fn,value,text", [
    (format_times, 1, "once"), (format_times, 2, "twice"), (format_times, 3, "three times"),
    (format_times, 10, "ten times"), (format_times, 11, "11 times"), (format_count, 4, "4"),
    (format_duration, 0.1, "about half a second"), (format_duration, 0.6, "about half a second"),
    (format_duration, 0.75, "about 1 second"), (format_duration, 1.26, "about 1.5 seconds"),
    (format_duration, 2.0000001, "about 2 seconds"), (format_duration, 2.74, "about 2.5 seconds"),
    (format_duration, 2.75, "about 3 seconds"), (format_duration, 12.2, "about 12 seconds"),
])
def test_number_formatting(fn, value, text):
    assert fn(value) == text


@pytest.mark.parametrize("text,value", [("once", 1), ("Twice.", 2), ("three times", 3), ("4 times", 4),
                                        ("7", 7), ("about five times", 5), ("a few", None)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text,value", [("about half a second", 0.5), ("about 2.5 seconds", 2.5),
                                        ("3 s", 3.0), ("two seconds", 2.0), ("a while", None)])
def test_parse_duration(text, value):
    assert parse_duration(text) == value


def _answer(r):
    return r.choices[r.answer]


def test_questions_for_a_clip(strong):
    tsv, lab, audio = strong
    clips = read_strong_tsv(tsv)
    recs = make_questions("clipA_0", clips["clipA_0"], LABELS, clip_rng(0, "clipA_0"), DEFAULT_TYPES,
                          audio / "clipA_0.wav", pool=sorted(LABELS))
    by = {r.question_type: r for r in recs}
    assert set(by) == set(DEFAULT_TYPES)
    assert _answer(by["counting"]) == "2"
    assert _answer(by["sequencing"]) == "dog, then vehicle horn"
    assert "vehicle horn, then dog" in by["sequencing"].choices  # the reversed order is a distractor
    # dog occurs twice, so only the horn (once, 3.0-5.5 s) can be asked about
    assert by["duration"].question.count("vehicle horn") == 1
    assert _answer(by["duration"]) == "about 2.5 seconds"
    freq = by["frequency"]
    assert _answer(freq) == {"/m/dog": "twice", "/m/horn": "once"}[freq.meta["label"]]
    for r in recs:
        assert len(r.choices) == 4 and len(set(r.choices)) == 4
        assert r.subset == "temporal" and r.source == "audioset-strong"
        assert "noise" not in r.question.lower() and not any("noise" in c for c in r.choices)


def test_rules_skip_ambiguous_questions(strong):
    tsv, _, audio = strong
    clips = read_strong_tsv(tsv)
    recs = make_questions("clipD_500", clips["clipD_500"], LABELS, clip_rng(0, "clipD_500"),
                          DEFAULT_TYPES, audio / "clipD_500.flac", pool=sorted(LABELS))
    by = {r.question_type: r for r in recs}
    assert _answer(by["counting"]) == "3"
    assert "sequencing" not in by  # cat and dog start 0.1 s apart: no clear second sound
    assert by["frequency"].meta["label"] in ("/m/cat", "/m/dog")  # birds too close to count
    assert by["duration"].meta["label"] in ("/m/cat", "/m/dog")  # birds too short


def test_convert_counts_skips_and_finds_flac(strong, tmp_path):
    tsv, lab, audio = strong
    recs, stats = convert_strong(read_strong_tsv(tsv), read_labels(lab), audio, seed=0)
    assert stats.clips == 4 and stats.clips_used == 2
    assert stats.skipped == Counter({"no audio file": 1, "no usable label": 1})
    assert {r.meta["segment_id"] for r in recs} == {"clipA_0", "clipD_500"}
    out = tmp_path / "out" / "qa.jsonl"
    write_records(out, recs, relative_to=out.parent)
    back, errors = read_records(out, root=tmp_path)
    assert not errors and len(back) == len(recs)
    assert {r.audio for r in back} == {"../audio/clipA_0.wav", "../audio/clipD_500.flac"}


def _random_clip(rng: random.Random) -> list[Event]:
    mids = rng.sample(["/m/dog", "/m/horn", "/m/bird", "/m/cat", "/m/rain", "/m/speech", "/m/bell",
                       "/m/noise"], rng.randint(1, 5))
    events = []
    for m in mids:
        t = rng.uniform(0, 2)
        for _ in range(rng.randint(1, 4)):
            d = rng.uniform(0.1, 2.5)
            events.append(Event(m, round(t, 3), round(t + d, 3)))
            t += d + rng.choice([-0.3, 0.05, 0.5, 1.5])  # overlaps, near-touches and clear gaps
    return events


def _occurrences(events: list[Event], mid: str) -> list[tuple[float, float]]:
    """Independent of the module: merge by scanning sorted intervals."""
    spans = sorted((e.onset, e.offset) for e in events if e.label == mid)
    out = []
    for on, off in spans:
        if out and on <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], off))
        else:
            out.append((on, off))
    return out


def test_answers_match_events_on_random_clips():
    rng = random.Random(1234)
    positions = Counter()
    for i in range(300):
        events = _random_clip(rng)
        recs = make_questions(f"c{i}", events, LABELS, clip_rng(7, f"c{i}"), DEFAULT_TYPES, "x.wav",
                              pool=sorted(LABELS))
        usable = sorted({e.label for e in events if e.label != "/m/noise"})
        names = spoken_names(LABELS)
        for r in recs:
            ans = _answer(r)
            positions[r.answer] += 1
            assert len(set(c.casefold() for c in r.choices)) == len(r.choices) == 4
            assert all(c.strip() and c == c.strip() for c in r.choices)
            if r.question_type == "counting":
                assert ans == str(len(usable))
            elif r.question_type == "frequency":
                assert ans == format_times(len(_occurrences(events, r.meta["label"])))
            elif r.question_type == "duration":
                (occ,) = _occurrences(events, r.meta["label"])
                assert ans == format_duration(occ[1] - occ[0]) and occ[1] - occ[0] >= 0.4
                value = float(ans.split()[1]) if ans[6].isdigit() else 0.5
                for c in r.choices:  # distractors far enough that rounding cannot make them right
                    if c != ans:
                        other = float(c.split()[1]) if c[6].isdigit() else 0.5
                        assert abs(other - value) >= 1.0 - 1e-9
            elif r.question_type == "sequencing":
                firsts = sorted((_occurrences(events, m)[0][0], m) for m in usable)
                assert ans == f"{names[firsts[0][1]]}, then {names[firsts[1][1]]}"
                assert firsts[1][0] - firsts[0][0] >= 0.3
    assert set(positions) == {0, 1, 2, 3} and min(positions.values()) > 0.15 * sum(positions.values())


def test_numeric_answers_rank_is_not_a_giveaway():
    """The answer must not always be the smallest (or largest) number among the options."""
    ranks = Counter()
    for i in range(200):
        events = [Event("/m/dog", k * 1.0, k * 1.0 + 0.5) for k in range(5)]  # five times
        (r,) = make_questions(f"c{i}", events, LABELS, clip_rng(0, f"c{i}"), ["frequency"], "x.wav")
        values = [parse_count(c) for c in r.choices]
        ranks[sorted(values).index(values[r.answer])] += 1
    assert len(ranks) == 4


def test_deterministic_for_a_seed(strong, tmp_path):
    tsv, lab, audio = strong

    def run(seed):
        recs, _ = convert_strong(read_strong_tsv(tsv), read_labels(lab), audio, seed=seed)
        out = tmp_path / f"s{seed}-{len(list(tmp_path.iterdir()))}.jsonl"
        write_records(out, recs, relative_to=tmp_path)
        return out.read_bytes()

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_max_per_clip_and_types(strong):
    tsv, lab, audio = strong
    recs, stats = convert_strong(read_strong_tsv(tsv), read_labels(lab), audio,
                                 types=("frequency", "duration"), max_per_clip=1)
    assert len(recs) == 2 and {r.question_type for r in recs} <= {"frequency", "duration"}


def test_cli(strong, tmp_path, capsys):
    from aqa.cli import main

    tsv, lab, audio = strong
    out = tmp_path / "as.jsonl"
    rc = main(["data", "audioset-strong", str(tsv), "--labels", str(lab), "--audio-root", str(audio),
               "-o", str(out), "--seed", "3", "--types", "counting,identification", "--per-clip", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out) in text and "skipped (no audio file): 1" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["question_type"] for r in rows} == {"counting", "identification"}
    assert all(r["audio"].startswith("audio/") for r in rows)
    ident = [r for r in rows if r["question_type"] == "identification"]
    for r in ident:
        present = {"clipA_0": {"dog", "vehicle horn"}, "clipD_500": {"bird", "cat", "dog"}}[
            r["meta"]["segment_id"]]
        assert r["choices"][r["answer"]] in present
        assert not present & (set(r["choices"]) - {r["choices"][r["answer"]]})
    with pytest.raises(SystemExit):
        main(["data", "audioset-strong", str(tsv), "--labels", str(lab), "--audio-root", str(audio),
              "-o", str(out), "--types", "bogus"])


def test_question_type_registry():
    assert QUESTION_TYPES == tuple(GENERATORS) == ("counting", "sequencing", "duration", "frequency",
                                                   "identification")
    assert set(DEFAULT_TYPES) < set(QUESTION_TYPES)
    names = {"/m/dog": "dog", "/m/cat": "cat"}
    # One short dog bark: countable and its frequency askable, but no order, no duration
    # (too short) and no identification (no absent sound to offer).
    out = drafts([Event("/m/dog", 1.0, 1.2)], names, pool=[], extra_pool=[], rng=random.Random(0),
                 types=QUESTION_TYPES, n_choices=4)
    assert [(d.qtype, d.answer) for d in out] == [("counting", "1"), ("frequency", "once")]
    out = drafts([Event("/m/dog", 1.0, 1.2)], names, pool=["/m/cat"], extra_pool=[], rng=random.Random(0),
                 types=["identification"], n_choices=4)
    assert [(d.qtype, d.answer, d.fallback) for d in out] == [("identification", "dog", ["cat"])]
    with pytest.raises(ValueError, match="unknown question type 'bogus'"):
        drafts([Event("/m/dog", 1.0, 1.2)], names, [], [], random.Random(0), ["counting", "bogus"], 4)


# --------------------------------------------------------------------------- issue 15.1


def many_clips(tmp_path, n=40, seconds=4.0):
    """n clips of `seconds` each, every one able to support every default type."""
    audio = tmp_path / "many"
    clips = {}
    for i in range(n):
        seg = f"m{i}"
        write_audio(audio / f"{seg}.wav", tone(seconds, sr=8000), sr=8000)
        clips[seg] = [Event("/m/dog", 0.2, 1.2), Event("/m/cat", 1.6, 1.9), Event("/m/cat", 2.4, 2.7),
                      Event("/m/bird", 3.0, 3.3)]
    return clips, audio


def test_one_question_per_clip_by_default_its_type_drawn_at_random(tmp_path):
    clips, audio = many_clips(tmp_path)
    recs, stats = convert_strong(clips, LABELS, audio, seed=0)
    per_clip = Counter(r.meta["segment_id"] for r in recs)
    assert set(per_clip.values()) == {1} and len(per_clip) == 40
    assert set(stats.questions) == set(DEFAULT_TYPES)  # every type drawn somewhere
    again, _ = convert_strong(clips, LABELS, audio, seed=0)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in recs]
    other, _ = convert_strong(clips, LABELS, audio, seed=1)
    assert [r.question_type for r in other] != [r.question_type for r in recs]


def test_per_clip_n_and_cli_default(tmp_path):
    from aqa.cli import main

    clips, audio = many_clips(tmp_path, n=6)
    two, _ = convert_strong(clips, LABELS, audio, seed=0, per_clip=2)
    assert set(Counter(r.meta["segment_id"] for r in two).values()) == {2}
    every, _ = convert_strong(clips, LABELS, audio, seed=0, per_clip=None)
    assert set(Counter(r.meta["segment_id"] for r in every).values()) == {4}
    tsv = tmp_path / "s.tsv"
    tsv.write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n" + "".join(
        f"{seg}\t{e.onset}\t{e.offset}\t{e.label}\n" for seg, evs in clips.items() for e in evs))
    lab = tmp_path / "labels.tsv"
    lab.write_text("".join(f"{m}\t{n}\n" for m, n in LABELS.items()))
    for extra, each in (([], 1), (["--per-clip", "3"], 3)):
        out = tmp_path / f"out{each}.jsonl"
        assert main(["data", "audioset-strong", str(tsv), "--labels", str(lab), "--audio-root", str(audio),
                     "-o", str(out), *extra]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert set(Counter(r["meta"]["segment_id"] for r in rows).values()) == {each}


def test_duration_options_never_exceed_the_clip(tmp_path):
    seconds = 3.0
    clips, audio = many_clips(tmp_path, n=30, seconds=seconds)
    recs, _ = convert_strong(clips, LABELS, audio, seed=0, types=("duration",))
    assert len(recs) == 30
    for r in recs:
        values = [float(c.split()[1]) if c[6].isdigit() else 0.5 for c in r.choices]
        assert max(values) <= seconds, r.choices
    # A 2-second clip leaves too few options for a 1-second sound: no question rather than a wrong one.
    short, _ = convert_strong(many_clips(tmp_path / "short", n=5, seconds=2.0)[0], LABELS,
                              tmp_path / "short" / "many", seed=0, types=("duration",))
    assert all(max(float(c.split()[1]) if c[6].isdigit() else 0.5 for c in r.choices) <= 2.0 for r in short)


def test_synthetic_files_are_unchanged(tmp_path):
    """synthesize() goes through convert_strong: its files must stay byte for byte what they were
    before the per-clip default (the demo's numbers depend on them). The digest was taken from
    the code before that change."""
    import hashlib

    from aqa.data.synth import synthesize

    synthesize(tmp_path, n=12, seed=11, duration=6.0, dev_fraction=0.25, workers=1)
    h = hashlib.sha256()
    for f in sorted(tmp_path.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(tmp_path)).encode())
            h.update(f.read_bytes())
    assert h.hexdigest() == "f8870604b190e94e2dba6b1ab33c107f5ad163a42939cdd17c649874011752ba"


def test_suggested_durations_longer_than_the_clip_are_rejected():
    class Suggests:
        def suggest(self, question, answer, k, hint=""):
            return ["about 9 seconds", "about 7 seconds", "about 4 seconds"]

    events = [Event("/m/dog", 1.0, 3.0)]
    (r,) = make_questions("c", events, LABELS, clip_rng(0, "c"), ["duration"], "x.wav", llm=Suggests(), length=6.0)
    assert "about 9 seconds" not in r.choices and "about 7 seconds" not in r.choices
    assert "about 4 seconds" in r.choices


def test_cli_writes_nothing_when_no_question_is_made(strong, tmp_path, capsys):
    from aqa.cli import main

    tsv, lab, _ = strong
    empty = tmp_path / "no-audio"
    empty.mkdir()
    out = tmp_path / "as.jsonl"
    assert main(["data", "audioset-strong", str(tsv), "--labels", str(lab), "--audio-root", str(empty),
                 "-o", str(out)]) == 1
    assert not out.exists() and "no questions made" in capsys.readouterr().err
