"""`aqa report` end to end on dirs written to disk: table numbers, plots, HTML escaping; and the\ndocument model that report.md and report.html are both rendered from."""

import html
import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

from aqa.cli import main
from aqa.eval.metrics import write_metrics
from aqa.eval.report import TrainRun, build_report, calibration_points
from aqa.eval.report.document import (
    BulletList, Code, Document, Heading, Image, Paragraph, Table, markdown_blocks, text_table, to_html, to_markdown)
from aqa.eval.report.plots import training_plot_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pred_rows(spec, probs=True):
    """spec: {subset: (n, n_correct)}; 4 options, answer 0, wrong answers pick option 1."""
    rows = []
    for subset, (n, k) in spec.items():
        for i in range(n):
            pred = 0 if i < k else 1
            p = [0.1, 0.1, 0.1, 0.1]
            p[pred] = 0.7
            rows.append({"id": f"{subset}-{i}", "subset": subset, "question_type": f"{subset}-type",
                         "choices": ["a", "b", "c", "d"], "answer": 0,
                         "probs": p if probs else None, "pred": pred, "correct": pred == 0})
    return rows


def write_eval(d, rows, metrics=True, name=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if metrics:
        write_metrics(d, rows, n_boot=200, extra={"name": name} if name else None)
    return d


@pytest.fixture
def runs(tmp_path):
    a = write_eval(tmp_path / "zs", pred_rows({"bqa": (4, 2), "tsqa": (3, 3)}), name="zero-shot")
    # no metrics.json: the report computes it from the predictions
    b = write_eval(tmp_path / "sft", pred_rows({"bqa": (4, 3), "tsqa": (3, 1), "cqa": (10, 9)}),
                   metrics=False)
    t = tmp_path / "grpo_run"
    t.mkdir()
    (t / "config.yaml").write_text("lr: 5.0e-6\n")
    log = [{"step": s, "epoch": s / 10, "loss": 1.0 / s, "lr": 5e-6, "reward": s / 20} for s in range(1, 21)]
    (t / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + '{"step": 21, "lo')
    write_eval(t / "eval" / "dev", pred_rows({"bqa": (4, 4), "cqa": (10, 5)}, probs=False))
    return tmp_path, [a, b, t]


def md_row(md, name):
    """The first row starting with `name` (the accuracy table comes first)."""
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_cli_table_and_plots(runs, capsys):
    tmp, dirs = runs
    out = tmp / "report"
    assert main(["report", *map(str, dirs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()

    header = md_row(md, "run")
    assert header == ["run", "bqa", "tsqa", "cqa", "arithmetic mean", "weighted mean"]
    assert md_row(md, "*items*") == ["*items*", "4", "3", "10", "3 subsets", "7–17"]
    zs = md_row(md, "zero-shot")
    assert zs[1:4] == ["50.0", "100.0", "–"]
    assert zs[4].startswith("75.0 [") and zs[5].startswith("71.4 [")  # (0.5+1)/2 and 5/7
    sft = md_row(md, "sft")  # named after its folder; metrics computed by the report
    assert sft[1:4] == ["75.0", "33.3", "90.0"]
    assert sft[4].startswith(f"{100 * (0.75 + 1 / 3 + 0.9) / 3:.1f} [")
    assert sft[5].startswith(f"{100 * 13 / 17:.1f} [")
    dev = md_row(md, "grpo_run/dev")
    assert dev[1:4] == ["100.0", "–", "50.0"] and dev[4].startswith("75.0 [")
    assert md_row(md, "*chance*")[1:4] == ["25.0", "25.0", "25.0"]
    # the means' intervals are there and bracket the estimate
    lo, hi = map(float, re.search(r"\[([\d.]+), ([\d.]+)\]", sft[5]).groups())
    assert lo <= 100 * 13 / 17 <= hi
    assert not (tmp / "sft" / "metrics.json").exists()  # inputs are left untouched

    for name in ("accuracy_per_subset.png", "loss_grpo_run.png", "calibration.png"):
        p = out / name
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"{p}" in printed
        assert f"]({name})" in md
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'src="accuracy_per_subset.png"' in html
    assert "<td>71.4 [" in html and "grpo_run/dev" in html
    assert "| grpo_run | 20 |" in md  # training table: last step of the complete lines


def test_names_and_escaping(runs):
    tmp, dirs = runs
    res = build_report(dirs, tmp / "r2", names=["<b>zs</b>", "a|b", "rl & co"])
    assert res["runs"] == ["<b>zs</b>", "a|b", "rl & co/dev"]
    assert res["training_runs"] == ["rl & co"]
    html = (tmp / "r2" / "report.html").read_text()
    assert "<b>zs</b>" not in html and "&lt;b&gt;zs&lt;/b&gt;" in html and "rl &amp; co/dev" in html
    md = (tmp / "r2" / "report.md").read_text()
    assert "| a\\|b | 75.0 |" in md
    assert (tmp / "r2" / "loss_rl-co.png").read_bytes()[:8] == PNG_MAGIC  # named by aqa.io.safe_name
    assert set(res["files"]) >= {res["markdown"], res["html"], *res["plots"]}


def test_container_dir_and_errors(runs, capsys):
    tmp, dirs = runs
    demo = tmp / "demo"
    write_eval(demo / "eval" / "zero-shot", pred_rows({"bqa": (2, 1)}))
    write_eval(demo / "eval" / "sft", pred_rows({"bqa": (2, 2)}))
    res = build_report([demo], tmp / "r3")
    assert res["runs"] == ["sft", "zero-shot"] and res["training_runs"] == []
    assert main(["report", str(tmp / "nothing"), "-o", str(tmp / "r4")]) == 2
    (tmp / "empty").mkdir()
    assert main(["report", str(tmp / "empty"), "-o", str(tmp / "r4")]) == 2
    assert main(["report", *map(str, dirs), "-o", str(tmp / "r4"), "--names", "one,two"]) == 2
    assert "one name per dir" in capsys.readouterr().err


def test_training_plot_names_are_safe_and_unique(tmp_path):
    runs = [TrainRun(n, tmp_path) for n in ("sft:a", "sft?a", "sft-a", "…", "grpo run")]
    assert training_plot_names(runs) == ["loss_sft-a.png", "loss_sft-a_2.png", "loss_sft-a_3.png",
                                         "loss_run.png", "loss_grpo-run.png"]


def test_calibration_points():
    rows = [{"answer": 0, "pred": 0, "probs": [0.95, 0.05]}, {"answer": 1, "pred": 0, "probs": [0.95, 0.05]},
            {"answer": 0, "pred": 1, "probs": [0.35, 0.65]}, {"answer": None, "pred": 0, "probs": [1, 0]},
            {"answer": 0, "pred": None, "probs": [0.5, 0.5]}, {"answer": 0, "pred": 0, "probs": None}]
    c = calibration_points(rows)
    assert c["n"] == 3 and c["count"] == [1, 2]
    assert c["confidence"] == pytest.approx([0.65, 0.95]) and c["accuracy"] == [0.0, 0.5]
    assert c["ece"] == pytest.approx((0.65 + 2 * 0.45) / 3)
    assert calibration_points([{"answer": 0, "pred": 0, "probs": None}]) is None


# ---------------------------------------------------------------------------- the document model


class _HtmlOutline(HTMLParser):
    """Headings, table rows (cell texts) and images of an HTML page, in page order."""

    def __init__(self):
        super().__init__()
        self.headings, self.rows, self.images, self.items = [], [], [], []
        self._text = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "img":
            a = dict(attrs)
            self.images.append((a["alt"], unquote(a["src"])))
        if tag in ("h1", "h2", "h3", "td", "th", "li"):
            self._text = ""

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3"):
            self.headings.append((int(tag[1]), self._text))
        elif tag in ("td", "th"):
            self.rows[-1].append(self._text)
        elif tag == "li":
            self.items.append(self._text)
        if tag in ("h1", "h2", "h3", "td", "th", "li"):
            self._text = None


def html_outline(page):
    p = _HtmlOutline()
    p.feed(page)
    return {"headings": p.headings, "rows": p.rows, "images": p.images, "items": p.items}


def _md_unescape(s):
    return s.replace("\\|", "|").replace("\\\\", "\\")


def md_outline(md):
    out = {"headings": [], "rows": [], "images": [], "items": []}
    for line in md.splitlines():
        if m := re.match(r"(#+) (.*)", line):
            out["headings"].append((len(m[1]), m[2]))
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [_md_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            # a note row's first cell is in italics in Markdown, a row class in HTML
            out["rows"].append([re.sub(r"^\*(.*)\*$", r"\1", cells[0]), *cells[1:]])
        elif m := re.match(r"!\[(.*)\]\((.*)\)$", line):
            out["images"].append((m[1], unquote(m[2])))
        elif line.startswith("- "):
            out["items"].append(_md_unescape(line[2:]).replace("`", ""))
    return out


def sample_document(text="plain"):
    return Document(f"Title {text}", [
        Paragraph(f"A paragraph: {text}."),
        Table(["run", f"col {text}"], [["items", "3"], [f"run {text}", "50.0 [1.0, 2.0]"], ["chance", "25.0"]],
              note_rows={0, 2}, title=f"Table {text}", caption=f"Caption {text}."),
        Heading(f"Plots {text}"),
        Image(f"loss {text}.png", f"Training: {text}"),
        Heading("Sources", 3),
        BulletList([(f"{text}: ", Code(f"/runs/{text}")), ("b: ", Code("/runs/b"))]),
    ])


def test_document_markdown_rendering():
    md = to_markdown(sample_document())
    assert md == ("# Title plain\n\nA paragraph: plain.\n\n## Table plain\n\n| run | col plain |\n|---|---:|\n"
                  "| *items* | 3 |\n| run plain | 50.0 [1.0, 2.0] |\n| *chance* | 25.0 |\n\nCaption plain.\n\n"
                  "## Plots plain\n\n![Training: plain](loss%20plain.png)\n\n### Sources\n\n"
                  "- plain: `/runs/plain`\n- b: `/runs/b`\n")
    assert markdown_blocks([Paragraph("x"), Heading("y", 1)]) == "x\n\n# y\n"


def test_text_table_aligns_names_left_and_numbers_right_and_wraps_the_caption():
    t = Table(["run", "weighted mean"], [["items", "493"], ["a long run name", "64.3 [60.0, 68.6]"], ["b", "5.0"]],
              {0}, title="Accuracy (%)", caption="word " * 30)
    lines = text_table(t, width=40).splitlines()
    assert lines[0] == "Accuracy (%)"
    assert lines[1] == "run                  weighted mean"
    assert lines[2] == "---------------  -----------------"
    assert lines[3:6] == ["items                          493", "a long run name  64.3 [60.0, 68.6]",
                          "b                              5.0"]
    assert lines[6] == "" and all(len(x) <= 40 for x in lines[7:]) and " ".join(lines[7:]).split() == ["word"] * 30


@pytest.mark.parametrize("text", ["plain", "a|b", "<b>&'\"", "back\\slash"])
def test_document_same_content_in_markdown_and_html(text):
    doc = sample_document(text)
    md, page = md_outline(to_markdown(doc)), html_outline(to_html(doc))
    assert md == page
    assert md["headings"] == [(1, f"Title {text}"), (2, f"Table {text}"), (2, f"Plots {text}"), (3, "Sources")]
    assert md["rows"] == [["run", f"col {text}"], ["items", "3"], [f"run {text}", "50.0 [1.0, 2.0]"], ["chance", "25.0"]]
    assert md["images"] == [(f"Training: {text}", f"loss {text}.png")]


def test_document_html_escapes_text():
    evil = "<script>alert('x')</script> & \"q\""
    page = to_html(sample_document(evil))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert f"<title>Title {html.escape(evil)}</title>" in page
    assert f"<td>run {html.escape(evil)}</td>" in page
    assert f'<p class="caption">Caption {html.escape(evil)}.</p>' in page
    assert f'alt="Training: {html.escape(evil)}"' in page  # quotes too, inside an attribute
    assert f"<code>/runs/{html.escape(evil)}</code>" in page
    assert '<tr class="note"><td>items</td>' in page
    md = to_markdown(Document("t", [Table(["a|b"], [["c|d"], ["e\\f\ng"]])]))
    assert "| a\\|b |" in md and "| c\\|d |" in md and "| e\\\\f g |" in md


def test_report_markdown_and_html_show_the_same_content(runs):
    tmp, dirs = runs
    res = build_report(dirs, tmp / "r5", names=["<b>zs</b>", "a|b", "rl & co"])
    md, page = res["markdown"].read_text(), res["html"].read_text()
    # the item browser is the one HTML-only section (tests/test_report_browser.py); report.md
    # points to it in one line
    browser = re.compile(r'<section id="browser">.*?</section>', re.S)
    assert len(browser.findall(page)) == 1
    assert [ln for ln in md.splitlines() if "browser" in ln.lower()] == [
        "Item browser (17 items, with filters and audio players): in report.html."]
    md_o, html_o = md_outline(md), html_outline(browser.sub("", page))
    assert md_o == html_o
    assert [h for _, h in md_o["headings"]] == ["AQA report", "Accuracy (%)", "Details", "Accuracy by question type (%)",
                                                "Training runs", "Plots", "Sources"]
    assert len(md_o["images"]) == 3 and "a|b: " + str(dirs[1]) in md_o["items"]
    # the table the command prints is the report's accuracy section
    assert res["table"].startswith("## Accuracy (%)\n\n| run |") and res["table"] in md


def test_sensitivity_table_passes_over_metrics_without_a_breakdown(tmp_path):
    """A silence/mismatched pair whose metrics.json (hand-made, or from an older aqa) lacks
    audio_contribution gives no sensitivity row instead of a KeyError."""
    from aqa.eval.report.data import EvalRun
    from aqa.eval.report.tables import sensitivity_table

    both = {"all": {"n": 4, "accuracy_with_audio": 0.75, "accuracy_without": 0.25, "contribution": 0.5}}
    silent = EvalRun("s", tmp_path, {"audio": "silence", "reference": "n"})
    mismatched = EvalRun("m", tmp_path, {"audio": "mismatched", "reference": "n", "audio_contribution": both})
    assert sensitivity_table([silent, mismatched]) is None
    silent.metrics["audio_contribution"] = both
    assert sensitivity_table([silent, mismatched]).rows[0][1] == "all"
