import pytest

from aqa.data.text import (DEFECT_LETTER_NO_CHOICE, DEFECT_LETTER_TEXT, DEFECT_NO_CHOICE,
                           DEFECT_TEXT_NO_CHOICE, NOTE_DUPLICATES, NOTE_LETTER_ORDER, NOTE_PARTIAL_PREFIX,
                           NOTE_STRAY_PUNCT, find_choice, match_answer, normalise_option,
                           normalise_options, split_letter_prefix, strip_stray_punctuation)


@pytest.mark.parametrize("text,want", [
    ("A. dog", ("A", "dog")), ("(B) cat meowing", ("B", "cat meowing")), ("C) car", ("C", "car")),
    ("D: rain", ("D", "rain")), ("  A.  dog ", ("A", "dog ")),
    ("A dog barking", (None, "A dog barking")),  # the article, not a letter
    ("A.M. radio", (None, "A.M. radio")), ("a) lower", (None, "a) lower")), ("B.", (None, "B.")),
])
def test_split_letter_prefix(text, want):
    assert split_letter_prefix(text) == want


@pytest.mark.parametrize("text,want", [
    ("dog,", "dog"), ("dog.", "dog"), ("dog .,", "dog"), ("dog;", "dog"), ("Watching TV.", "Watching TV"),
    ("Washington D.C.", "Washington D.C."), ("and so on etc.", "and so on etc."), ("wait...", "wait..."),
    ("G#", "G#"), ("Is it?", "Is it?"), ("stop!", "stop!"), ("(a bird)", "(a bird)"), ("1.5", "1.5"),
    (",", ","), ("", ""),
])
def test_strip_stray_punctuation(text, want):
    assert strip_stray_punctuation(text) == want


def test_normalise_option_whitespace():
    assert normalise_option("  A dog\t barking ,") == "A dog barking"


def test_find_choice():
    ch = ["dog barking", "Car horn", "rain"]
    assert find_choice("dog barking.", ch) == 0
    assert find_choice(" car horn ", ch) == 1  # case-folded pass
    assert find_choice("thunder", ch) is None
    assert find_choice("", ch) is None
    assert find_choice("dog", ["Dog", "DOG"]) is None  # two options match case-folded: ambiguous
    assert find_choice("x", ["X", "x "]) == 1  # exact beats case-folded
    assert find_choice("a", ["A", "a."]) == 1


def test_normalise_options_strips_letters_and_keeps_originals():
    o = normalise_options(["A. dog,", "B. cat", "C. car"])
    assert o.choices == ["dog", "cat", "car"] and o.labels == ["A", "B", "C"]
    assert o.original == ["A. dog,", "B. cat", "C. car"] and o.notes == [NOTE_STRAY_PUNCT]


def test_normalise_options_partial_and_out_of_order():
    # A real option text that looks like a prefix survives when the other options have none.
    o = normalise_options(["Hemingway", "Joyce", "F. Scott Fitzgerald"])
    assert o.choices == ["Hemingway", "Joyce", "F. Scott Fitzgerald"] and NOTE_PARTIAL_PREFIX in o.notes
    o = normalise_options(["Hemingway", "Joyce", "F. Scott Fitzgerald"], strip_letters=False)
    assert o.choices[2] == "F. Scott Fitzgerald" and not o.notes
    o = normalise_options(["B. x", "A. y"])
    assert o.choices == ["x", "y"] and o.labels == ["B", "A"] and NOTE_LETTER_ORDER in o.notes
    assert o.index_for_letter("A") == 1


def test_normalise_options_merges_duplicates():
    o = normalise_options(["one", "three", "three ", "zero"], strip_letters=False)
    assert o.choices == ["one", "three", "zero"] and o.index_of == [0, 1, 1, 2]
    assert NOTE_DUPLICATES in o.notes


OPTS = ["A. dog", "B. cat,", "C. car horn"]


@pytest.mark.parametrize("answer,index,by_letter,by_text,defects", [
    ("B. cat", 1, 1, 1, []),                       # comma on the option, none on the answer
    ("C. car horn", 2, 2, 2, []),
    ("car horn", 2, None, 2, []),                  # text only
    ("B", 1, 1, None, []),                         # letter only
    ("(C)", 2, 2, None, []),
    ("B. car horn", 1, 1, 2, [DEFECT_LETTER_TEXT]),  # letter says B, text is C's
    ("A. thunder", 0, 0, None, [DEFECT_TEXT_NO_CHOICE]),
    ("E. dog", 0, None, 0, [DEFECT_LETTER_NO_CHOICE]),
    ("E. thunder", None, None, None, [DEFECT_NO_CHOICE]),
    ("thunder", None, None, None, [DEFECT_NO_CHOICE]),
])
def test_match_answer(answer, index, by_letter, by_text, defects):
    m = match_answer(answer, normalise_options(OPTS))
    assert (m.index, m.by_letter, m.by_text, m.defects) == (index, by_letter, by_text, defects)


def test_match_answer_text_without_letters():
    o = normalise_options(["Hemingway", "Joyce", "F. Scott Fitzgerald"], strip_letters=False)
    assert match_answer("F. Scott Fitzgerald", o, use_letter=False).index == 2
    # Read with letters on, "F" names no option, and the whole string still matches.
    assert match_answer("F. Scott Fitzgerald", o).index == 2
    notes = normalise_options(["C", "A", "B"], strip_letters=False)
    assert match_answer("A", notes).index == 1  # an option whose text is a letter
