"""report.html's item browser in a real browser: headless Chromium loads the page from disk,
a filter checkbox is clicked with a mouse event, and the rows shown and a screenshot are
checked; and the browser's content (offline, clips linked or embedded, no data file) without one.

Chromium is driven through its DevTools protocol over `--remote-debugging-pipe` (JSON messages
separated by NUL bytes on file descriptors 3 and 4): a real click through the protocol, with no
websocket client to install. `./run test` installs Chromium as root on Debian; without it the
browser test fails and says what to install, since CI must run every test."""

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
import wave
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aqa.cli import main
from aqa.eval.metrics import write_metrics
from aqa.eval.report import build_report

# item: (run a's pick, run b's pick, the silent run's pick); every answer is option 0
PICKS = {"q0": (0, 0, 0), "q1": (0, 0, 3), "q2": (0, 1, 1), "q3": (0, 0, 2),
         "q4": (1, 0, 3), "q5": (2, 2, 1)}
WRONG = ["q2", "q4", "q5"]
DISAGREE = ["q2", "q4"]  # q5: both wrong, the same pick
NO_AUDIO_RIGHT = ["q0"]


def write_wav(path, seconds=0.25, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x10" * int(seconds * rate))


def probs_for(pick, conf):
    p = [(1 - conf) / 3] * 4
    p[pick] = conf
    return p


@pytest.fixture
def evals(tmp_path):
    """Two runs that heard the audio and one silent run, over a data file with a WAV per item."""
    data_dir = tmp_path / "data"
    (data_dir / "clips").mkdir(parents=True)
    recs = []
    for i, rid in enumerate(PICKS):
        write_wav(data_dir / "clips" / f"{rid}.wav")
        # dataset text that would break out of the page's script element if written as is
        nasty = " </script><!--<script>alert(1)</script>" if rid == "q1" else ""
        recs.append({"id": rid, "audio": f"clips/{rid}.wav", "question": f"What is heard in {rid}?{nasty}",
                     "choices": ["dog", "cat", "car", "rain"], "answer": 0,
                     "subset": "sound" if i < 3 else "music", "question_type": f"type{i % 2}"})
    data = data_dir / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    dirs = []
    for k, name in enumerate(["a", "b", "silent"]):
        d = tmp_path / "eval" / name
        d.mkdir(parents=True)
        # confidences differ per item, so that sorting has an order to find
        rows = [{"id": rid, "subset": r["subset"], "question_type": r["question_type"],
                 "choices": r["choices"], "answer": 0, "pred": PICKS[rid][k],
                 "probs": probs_for(PICKS[rid][k], 0.4 + 0.1 * i), "correct": PICKS[rid][k] == 0}
                for i, (rid, r) in enumerate(zip(PICKS, recs))]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = {"name": name, "data": str(data)}
        if name == "silent":
            extra |= {"audio": "silence", "reference": str(tmp_path / "eval" / "a")}
        write_metrics(d, rows, n_boot=0, extra=extra)
        dirs.append(d)
    return tmp_path, dirs, data


def page_data(html):
    m = re.search(r'<script type="application/json" id="b-data">(.*?)</script>', html, re.S)
    return json.loads(m[1])


class _Urls(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_browser_content_offline_and_filters_flags(evals):
    tmp, dirs, data = evals
    out = tmp / "report"
    assert main(["report", *map(str, dirs), "-o", str(out)]) == 0
    page = (out / "report.html").read_text()
    p = _Urls()
    p.feed(page)
    assert p.urls and not [u for u in p.urls if re.match(r"(?i)\s*(https?:)?//", u)]
    assert "http://" not in page and "https://" not in page
    d = page_data(page)
    assert [r["name"] for r in d["runs"]] == ["a", "b", "silent"]
    assert [r["no_audio"] for r in d["runs"]] == [False, False, True]
    items = {it["id"]: it for it in d["items"]}
    assert list(items) == list(PICKS)
    assert [i for i, it in items.items() if it["wrong"]] == WRONG
    assert [i for i, it in items.items() if it["disagree"]] == DISAGREE
    assert [i for i, it in items.items() if it["no_audio_right"]] == NO_AUDIO_RIGHT
    assert items["q0"]["question"] == "What is heard in q0?"
    assert items["q3"]["audio"] == "../data/clips/q3.wav" and (out / items["q3"]["audio"]).is_file()
    assert items["q4"]["picks"] == [1, 0, 3]
    # a mismatched-audio control run, wrong everywhere: neither "wrong" nor "disagree" moves
    m = tmp / "eval" / "mismatched"
    m.mkdir()
    rows = [{**r, "pred": 3, "correct": False} for r in map(json.loads, (dirs[0] / "predictions.jsonl").open())]
    (m / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_metrics(m, rows, n_boot=0, extra={"audio": "mismatched", "reference": str(dirs[1]), "data": str(data)})
    d2 = page_data(build_report([*dirs, m], tmp / "r-m")["html"].read_text())
    assert len(d2["runs"]) == 4 and [it["picks"][3] for it in d2["items"]] == [3] * 6
    for flag, ids in (("wrong", WRONG), ("disagree", DISAGREE), ("no_audio_right", NO_AUDIO_RIGHT)):
        assert [it["id"] for it in d2["items"] if it[flag]] == ids
    md = (out / "report.md").read_text()
    assert "Item browser (6 items, with filters and audio players): in report.html." in md
    assert "<script" not in md


def test_browser_embeds_a_sample_caps_items_and_survives_a_missing_data_file(evals):
    tmp, dirs, data = evals
    d = page_data(build_report(dirs, tmp / "r1", embed_audio=2, max_items=5)["html"].read_text())
    assert [it["id"] for it in d["items"]] == list(PICKS)[:5] and d["total"] == 6
    embedded = [it["id"] for it in d["items"] if it.get("embedded")]
    assert embedded == ["q2", "q4"]  # the first wrong ones
    clip = base64.b64decode(next(it for it in d["items"] if it["id"] == "q2")["audio"].split(",", 1)[1])
    assert clip == (data.parent / "clips" / "q2.wav").read_bytes()
    page = (tmp / "r1" / "report.html").read_text()
    assert "5 of 6 items are in the page (at most 5); 1 left out." in page
    assert "2 clip(s) embedded" in page

    data.unlink()
    d = page_data(build_report(dirs, tmp / "r2")["html"].read_text())
    assert len(d["items"]) == 6
    assert all(it["audio"] is None and it["question"] == "" for it in d["items"])
    assert d["items"][4]["picks"] == [1, 0, 3]


# ---------------------------------------------------------------------------- in Chromium


def chromium_exe():
    exe = os.environ.get("AQA_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not exe or not os.access(exe, os.X_OK):
        where = f"at {exe!r}" if exe else "found"
        pytest.fail(f"no Chromium {where}: the item browser test needs it. Install it (Debian: `apt-get "
                    "install chromium`; `./run test` does so when run as root) or set AQA_CHROMIUM to its path")
    return exe


class Chromium:
    """Headless Chromium and its DevTools protocol over a pipe, attached to its one page."""

    def __init__(self, url, profile, timeout=20.0):
        self.timeout, self.n, self.buf, self.events = timeout, 0, b"", []
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()

        def fds():  # the protocol's fixed descriptors: Chromium reads 3 and writes 4
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.log = open(Path(profile) / "chromium.log", "w+b")  # noqa: SIM115 -- closed in close()
        # --no-sandbox: CI runs the tests as root, where Chromium's sandbox refuses to start
        self.proc = subprocess.Popen(
            [chromium_exe(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--mute-audio", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1200,1400", url],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, preexec_fn=fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self.session = None
        deadline = time.monotonic() + timeout
        while True:
            pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, "Chromium opened no page"
            time.sleep(0.1)
        self.session = self.call("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)["sessionId"]

    def call(self, method, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.n:
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]
                if "method" in reply:
                    self.events.append(reply)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_r], [], [], left)[0]:
                raise AssertionError(f"{method}: no answer from Chromium in {self.timeout}s; its log:\n"
                                     f"{self.read_log()}")
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise AssertionError(f"{method}: Chromium exited; its log:\n{self.read_log()}")
            self.buf += chunk

    def wait_event(self, method):
        """Wait for an event, reading messages as a call does until it comes."""
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} from Chromium in {self.timeout}s"
            self.call("Runtime.evaluate", expression="0")  # a round trip: the events before it arrive
            time.sleep(0.05)

    def read_log(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def js(self, expr, wait=False):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=wait)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def click(self, selector):
        """A mouse press and release at the element's centre, as a person's click."""
        box = self.js(f"(function(){{var e=document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block:'center'});var r=e.getBoundingClientRect();"
                      "return [r.x+r.width/2,r.y+r.height/2]})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self):
        try:
            self.call("Browser.close")
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_w)
        os.close(self.from_r)
        self.log.close()


SHOWN = "Array.from(new Set(Array.from(document.querySelectorAll('#b-items tbody tr')).map(r=>r.dataset.id)))"


def test_browser_in_headless_chromium(evals):
    tmp, dirs, _ = evals
    out = tmp / "report"
    build_report(dirs, out)
    profile = tmp / "chromium-profile"
    profile.mkdir()
    b = Chromium((out / "report.html").resolve().as_uri(), profile)
    try:
        # loaded again with the network watched, to see every request the page makes
        b.call("Network.enable")
        b.call("Page.enable")
        b.call("Page.reload", ignoreCache=True)
        b.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + 15
        while b.js("document.readyState") != "complete" or not b.js(
                "(document.getElementById('b-count')||{}).textContent"):
            assert time.monotonic() < deadline, "the item browser never rendered"
            time.sleep(0.1)
        assert b.js(SHOWN) == list(PICKS)
        assert b.js("document.getElementById('b-count').textContent") == "6 of 6 items shown"
        # the question, each run's probability and pick, and the answer, in the item's rows
        q4 = b.js("Array.from(document.querySelectorAll('#b-items tr[data-id=q4]')).map(r=>r.innerText)")
        assert "What is heard in q4?" in q4[0] and "answer" in q4[0] and "pick" in q4[1]
        q1 = b.js("document.querySelector('#b-items tr[data-id=q1] .q').innerText")
        assert "What is heard in q1? </script><!--<script>alert(1)</script>" in q1

        b.click("#f-wrong")
        assert b.js("document.getElementById('f-wrong').checked") is True
        assert b.js(SHOWN) == WRONG
        b.click("#f-disagree")
        assert b.js(SHOWN) == DISAGREE
        b.click("#f-wrong")
        b.click("#f-disagree")
        b.click("#f-noaudio")
        assert b.js(SHOWN) == NO_AUDIO_RIGHT
        b.click("#f-noaudio")
        # the mean confidence of the runs' picks rises with the item's index
        b.js("var s=document.getElementById('f-sort');s.value='conf-desc';s.dispatchEvent(new Event('change'))")
        assert b.js(SHOWN) == list(reversed(PICKS))

        # the player's relative link reaches the clip: Chromium reads its duration from it
        src, secs = b.js("new Promise(function(ok){var a=document.querySelector('#b-items audio');"
                         "a.onloadedmetadata=function(){ok([a.src,a.duration])};a.onerror=function(){ok([a.src,-1])};"
                         "a.preload='metadata';a.load()})", wait=True)
        assert src.startswith("file://") and secs == pytest.approx(0.25, abs=0.01)
        # offline: everything the page loaded came from disk or from the page itself
        loaded = [e["params"]["request"]["url"] for e in b.events if e["method"] == "Network.requestWillBeSent"]
        assert any(u.endswith("/report.html") for u in loaded) and any(u.endswith(".png") for u in loaded)
        assert all(u.startswith(("file:", "data:")) for u in loaded), loaded

        b.js("window.scrollTo(0, document.getElementById('browser').offsetTop)")
        png = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    finally:
        b.close()
    shot = out / "browser.png"
    shot.write_bytes(png)
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size[0] >= 800 and img.size[1] >= 600
    # a page with text, a table and coloured picks, not a blank or one-colour frame
    assert len(img.getcolors(1 << 20)) > 50


def test_an_unlabelled_item_is_never_wrong(tmp_path):
    from aqa.eval.report.browser import browser_data
    from aqa.eval.report.data import EvalRun
    rows = [{"id": "u", "choices": ["x", "y"], "answer": None, "pred": 1},
            {"id": "l", "choices": ["x", "y"], "answer": 0, "pred": 1}]
    d = browser_data([EvalRun("r", tmp_path, {}, rows)], tmp_path)
    assert [(it["id"], it["wrong"]) for it in d["items"]] == [("u", False), ("l", True)]
    assert d["items"][0]["audio"] is None and d["items"][0]["question"] == ""
