"""The loose text keys: what each treats as the same text, and what it keeps apart."""

import json
import subprocess
import sys

import pytest

from aqa.textnorm import answer_key, loose_key, question_key


@pytest.mark.parametrize("a,b", [("Dog.", "dog"), ("dog  barking!", "Dog barking"), ("rock-and-roll", "rock and roll"),
                                 ("STRASSE", "straße"), ("“quoted”", "quoted")])
def test_loose_key_ignores_case_punctuation_and_spacing(a, b):
    assert loose_key(a) == loose_key(b)


def test_loose_key_keep_spares_characters():
    assert loose_key("about 2.5 seconds.") == "about 2 5 seconds"
    assert loose_key("about 2.5 seconds.", keep=".") == "about 2.5 seconds."


def test_answer_key_deletes_ascii_punctuation_but_keeps_hyphens():
    assert answer_key(" It's a  Dog! ") == "its a dog"
    assert answer_key("rock-and-roll") == "rock-and-roll"
    assert answer_key("“quoted”") == "“quoted”"  # not ASCII punctuation


def test_question_key_keeps_punctuation():
    assert question_key(" What  sound is IT?\t") == "what sound is it?"
    assert question_key("Is it a dog?") != question_key("Is it a dog.")


def test_prompts_import_nothing_from_the_data_layer():
    code = "import json, sys, aqa.prompts; print(json.dumps(sorted(m for m in sys.modules if m.startswith('aqa.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["aqa.prompts", "aqa.textnorm"]
