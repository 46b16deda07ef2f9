"""The converter machinery every `aqa data <source>` command shares."""

import pytest

from aqa.data.convert import (ConversionReport, SkipItem, checked_options, first_of_each_id, run_converter,
                              string_id)


def test_first_of_each_id_keeps_the_earliest_place_whatever_the_order_met():
    dups = []
    kept = first_of_each_id([("b", 3, "b@3"), ("a", 7, "a@7"), ("b", 1, "b@1"), ("a", 2, "a@2"), ("c", 5, "c@5")],
                            lambda rid, first, where: dups.append((rid, first, where)))
    assert kept == [("a", 2, "a@2"), ("b", 1, "b@1"), ("c", 5, "c@5")]
    assert dups == [("a", 2, 7), ("b", 1, 3)]


@pytest.mark.parametrize("value,want", [(" x1 ", "x1"), (12, "12"), (1.5, "1.5"), (True, None), ("  ", None),
                                        (None, None), (["x"], None)])
def test_string_id(value, want):
    assert string_id(value) == want


def test_checked_options_refuses_too_few_or_empty_options():
    assert checked_options(["A. dog,", "B. cat"], strip_letters=True).choices == ["dog", "cat"]
    with pytest.raises(SkipItem) as e:
        checked_options(["dog", "dog."], strip_letters=False)
    assert e.value.kind == "too-few-choices"
    with pytest.raises(SkipItem) as e:
        checked_options(["dog", " "], strip_letters=False)
    assert e.value.kind == "empty-choice"


def test_report_lists_a_skipped_item_under_its_id():
    report = ConversionReport(source="s", split="dev")
    report.skipped({"id": 7}, SkipItem("missing-field", "no question"), file="f.jsonl:3", line=3)
    report.skipped("not an object", SkipItem("not-an-object", "a string"), file="f.jsonl:4")
    assert report.errors == [
        {"kind": "missing-field", "file": "f.jsonl:3", "id": "7", "problem": "no question", "line": 3},
        {"kind": "not-an-object", "file": "f.jsonl:4", "id": None, "problem": "a string"}]


def test_run_converter_exit_codes(tmp_path, capsys):
    def missing():
        raise FileNotFoundError("no such file: x")

    assert run_converter(missing, tmp_path / "o.jsonl") == 2
    assert "error: no such file: x" in capsys.readouterr().out
    empty = ConversionReport(source="s", split="dev")
    assert run_converter(lambda: empty, tmp_path / "o.jsonl", hint=lambda r: "try --split eval") == 1
    out = capsys.readouterr().out
    assert "hint: try --split eval" in out and not (tmp_path / "o.jsonl").exists()
