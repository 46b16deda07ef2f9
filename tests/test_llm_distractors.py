"""LLM distractors against a fake OpenAI-compatible server on 127.0.0.1 (no other network)."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aqa.data.sources.audioset_strong import clip_rng, make_questions
from aqa.data.events import Event
from aqa.data.llm import (ChatClient, LLMDistractors, chat_url, merge_distractors, parse_options)
from aqa.data.records import write_records

KEY = "sk-test-SECRET-0123456789"
LABELS = {"/m/dog": "Dog", "/m/horn": "Vehicle horn, car horn, honking", "/m/cat": "Cat",
          "/m/rain": "Rain", "/m/bell": "Bell", "/m/bird": "Bird"}


class FakeServer:
    """Answers /v1/chat/completions with `self.reply` (a string) or `self.status` != 200."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = '["three times", "twice"]'
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(body)})
                if outer.status != 200:
                    # echo the auth header, as a careless server might: it must be redacted
                    msg = f"bad things; you sent {self.headers.get('Authorization')}".encode()
                    self.send_response(outer.status)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                data = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": outer.reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("AQA_TEST_LLM_KEY", KEY)
    return "AQA_TEST_LLM_KEY"


DOG_TWICE = [Event("/m/dog", 1.0, 2.0), Event("/m/dog", 4.0, 5.0), Event("/m/horn", 6.0, 7.0)]


def _frequency_question(llm):
    recs = make_questions("c1", DOG_TWICE, LABELS, clip_rng(0, "c1"), ["frequency"], "c1.wav", llm=llm)
    assert len(recs) == 1
    return recs[0]


def test_chat_url():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


@pytest.mark.parametrize("text,items", [
    ('Sure! ["a", "b", "c"]', ["a", "b", "c"]),
    ("1. first\n2) second\n- third\nB. fourth", ["first", "second", "third", "fourth"]),
])
def test_parse_options(text, items):
    assert parse_options(text) == items


def test_merge_distractors_validates_and_fills():
    out, n_llm = merge_distractors(["Twice.", "", "  ", "four times", "Four times", "bark", "five"],
                                   "twice", ["three times", "once", "four times"], 3,
                                   forbidden=["bark"])
    assert out == ["four times", "five", "three times"] and n_llm == 2
    out, n_llm = merge_distractors(None, "x", ["a", "x", "a", "b"], 3)
    assert out == ["a", "b"] and n_llm == 0  # too few: the caller drops the question


def test_request_and_validation(server, key_env, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    # "two times" means the answer; "" and the duplicate must go; "7" is re-worded
    server.reply = '["two times", "", "three times", "Three times.", "7"]'
    llm = LLMDistractors(ChatClient(server.url + "/v1", "fake-model", key_env))
    rec = _frequency_question(llm)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "fake-model"
    prompt = req["body"]["messages"][-1]["content"]
    assert rec.question in prompt and "twice" in prompt
    assert rec.choices[rec.answer] == "twice"
    wrong = set(rec.choices) - {"twice"}
    assert {"three times", "seven times"} <= wrong and "two times" not in wrong
    assert len(set(rec.choices)) == 4 and rec.meta["distractors"] == "llm+rules"
    out = tmp_path / "q.jsonl"
    write_records(out, [rec])
    assert KEY not in out.read_text() and KEY not in caplog.text and KEY not in repr(llm.client)


def test_identification_rejects_sounds_in_the_clip(server, key_env):
    server.reply = '["dog", "vehicle horn", "a dog barking", "thunder", "thunder", "rain"]'
    llm = LLMDistractors(ChatClient(server.url, "m", key_env))
    events = [Event("/m/dog", 1.0, 2.0), Event("/m/horn", 4.0, 5.0)]
    (rec,) = make_questions("c2", events, LABELS, clip_rng(0, "c2"), ["identification"], "c2.wav",
                            llm=llm)
    wrong = set(rec.choices) - {rec.choices[rec.answer]}
    assert rec.choices[rec.answer] in ("dog", "vehicle horn")
    assert {"thunder", "rain"} <= wrong
    assert not wrong & {"dog", "vehicle horn", "a dog barking"} and len(wrong) == 3


def test_http_error_falls_back_with_warning(server, key_env, caplog):
    server.status = 500
    llm = LLMDistractors(ChatClient(server.url, "m", key_env), max_failures=2)
    with caplog.at_level(logging.WARNING):
        rec = _frequency_question(llm)
        rec2 = _frequency_question(llm)
        _frequency_question(llm)
    assert rec.meta["distractors"] == "rules" and rec == rec2
    assert "HTTP 500" in caplog.text and "***" in caplog.text  # the echoed key was redacted
    assert KEY not in caplog.text
    assert llm.disabled and len(server.requests) == 2  # stopped asking after 2 failures


def test_unreachable_server_falls_back(caplog):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = LLMDistractors(ChatClient(f"http://127.0.0.1:{port}", "m", timeout=2))
    with caplog.at_level(logging.WARNING):
        rec = _frequency_question(llm)
    assert rec.choices[rec.answer] == "twice" and rec.meta["distractors"] == "rules"
    assert "cannot reach" in caplog.text


def test_missing_key_variable_is_a_warning(server, monkeypatch, caplog):
    monkeypatch.delenv("AQA_NO_SUCH_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        client = ChatClient(server.url, "m", "AQA_NO_SUCH_KEY")
    assert "AQA_NO_SUCH_KEY" in caplog.text
    LLMDistractors(client).suggest("Q?", "A")
    assert "Authorization" not in server.requests[0]["headers"]


def test_cli_with_llm(server, key_env, tmp_path, capsys, caplog):
    from aqa.cli import main
    from conftest import tone, write_audio

    caplog.set_level(logging.DEBUG)
    server.reply = '["about 9 seconds", "about 2.5 seconds", "about 7 seconds"]'
    tsv = tmp_path / "s.tsv"
    tsv.write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
                   "y1_0\t1.0\t3.0\t/m/dog\ny1_0\t4.0\t5.0\t/m/horn\n")
    lab = tmp_path / "labels.tsv"
    lab.write_text("".join(f"{m}\t{n}\n" for m, n in LABELS.items()))
    # 10 s, as AudioSet clips are: the suggested 9 and 7 seconds fit in the clip (a longer
    # option than the clip is rejected, like an ambiguous one).
    write_audio(tmp_path / "audio" / "y1_0.wav", tone(10.0))
    out = tmp_path / "q.jsonl"
    rc = main(["data", "audioset-strong", str(tsv), "--labels", str(lab), "--audio-root",
               str(tmp_path / "audio"), "-o", str(out), "--types", "duration",
               "--llm-base-url", server.url, "--llm-model", "fake", "--llm-api-key-env", key_env])
    assert rc == 0
    printed = capsys.readouterr()
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["choices"][row["answer"]] in ("about 2 seconds", "about 1 second")
    # 2.5 s is within a second of a 2 s answer: rejected as ambiguous, a rule fills in
    if row["choices"][row["answer"]] == "about 2 seconds":
        assert "about 2.5 seconds" not in row["choices"]
    assert "about 9 seconds" in row["choices"] and "about 7 seconds" in row["choices"]
    for text in (out.read_text(), printed.out, printed.err, caplog.text):
        assert KEY not in text
    assert server.requests and server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
