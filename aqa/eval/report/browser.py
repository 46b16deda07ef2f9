"""The item browser in report.html: per item the question, the options with each run's
probability, the answer, each run's pick and a player for the clip, with filters and sorting.

It is one self-contained HTML section (inline script and style, the items as JSON in the page):
nothing is fetched from the network, so the report works offline and from a copied folder.
Clips are linked by their path relative to the report folder; `embed_audio` puts a sample of
them (the first N items some run got wrong, then the first others) into the page as data URIs,
for a report that travels without the dataset.

Questions and clips come from the data file an eval names in metrics.json (`data`), since
predictions rows carry the choices and the answer but not the question or the audio path.
When that file is gone the items are still shown, without the question or a player.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aqa.eval.report.data import EvalRun, finite

log = logging.getLogger(__package__)

#: items put into the page by default; beyond it the page says how many were left out
MAX_ITEMS = 5000
#: evals run without the audio; an item one of them got right was "answered without audio"
NO_AUDIO = ("silence", "none")
_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
         ".m4a": "audio/mp4", ".opus": "audio/ogg"}


def _records_by_id(e: EvalRun) -> dict[str, Any]:
    """The eval's data file's records by id, or none when the file is gone or unreadable: the
    browser is a view of the results and must not fail the report over a moved dataset."""
    data = e.metrics.get("data")
    if not isinstance(data, str) or not Path(data).is_file():
        return {}
    from aqa.data.records import load_records
    try:
        return {r.id: r for r in load_records(data, allow_outside_root=True)}
    except Exception as ex:  # noqa: BLE001 -- any unreadable file only costs the questions and players
        log.warning("%s: item browser without questions and clips (%s)", data, ex)
        return {}


def browser_data(evals: Sequence[EvalRun], out_dir: str | os.PathLike, *,
                 max_items: int = MAX_ITEMS, embed_audio: int = 0) -> dict | None:
    """The browser's content: {"runs": [{name, no_audio}], "items": [...], "total": n,
    "embedded": n, "embed_note": str}, or None when no eval has predictions."""
    runs = [e for e in evals if e.rows]
    if not runs:
        return None
    out = Path(out_dir).resolve()
    records: dict[str, Any] = {}
    read: set[str] = set()
    for e in runs:
        data = e.metrics.get("data")
        data = data if isinstance(data, str) else ""
        if data in read:  # runs over the same benchmark: its file is read once
            continue
        read.add(data)
        for rid, rec in _records_by_id(e).items():
            records.setdefault(rid, rec)
    items: dict[str, dict] = {}
    for k, e in enumerate(runs):
        for r in e.rows:
            rid = str(r.get("id"))
            it = items.get(rid)
            if it is None:
                rec = records.get(rid)
                audio = rec.audio_path if rec is not None and rec.audio_path else None
                it = items[rid] = {
                    "id": rid, "question": rec.question if rec is not None else "",
                    "choices": [str(c) for c in (r.get("choices") or (rec.choices if rec else []))],
                    "answer": r.get("answer"), "subset": str(r.get("subset") or ""),
                    "type": str(r.get("question_type") or ""),
                    "audio": os.path.relpath(audio, out) if audio and Path(audio).is_file() else None,
                    "_path": audio, "picks": [None] * len(runs), "probs": [None] * len(runs)}
            pred = r.get("pred")
            it["picks"][k] = pred if isinstance(pred, int) and not isinstance(pred, bool) else None
            probs = r.get("probs")
            if isinstance(probs, list):
                it["probs"][k] = [finite(p) for p in probs]
    total = len(items)
    shown = list(items.values())[:max(max_items, 0)]
    no_audio = [e.metrics.get("audio") in NO_AUDIO and bool(e.metrics.get("reference")) for e in runs]
    # "wrong" and "disagree" are about the runs that heard their own clip: a silent or
    # mismatched control run being wrong, or differing, is what it is run for (all runs when
    # every one is a control)
    control = [e.metrics.get("audio") in (*NO_AUDIO, "mismatched") and bool(e.metrics.get("reference"))
               for e in runs]
    heard = [k for k, c in enumerate(control) if not c] or list(range(len(runs)))
    for it in shown:
        picks = [it["picks"][k] for k in heard]
        # an unlabelled item (no answer) is never wrong
        it["wrong"] = it["answer"] is not None and any(p is not None and p != it["answer"] for p in picks)
        it["disagree"] = len({p for p in picks if p is not None}) > 1
        it["no_audio_right"] = any(na and p is not None and p == it["answer"]
                                   for p, na in zip(it["picks"], no_audio))
    embedded = _embed(shown, embed_audio)
    for it in shown:
        it.pop("_path")
    note = ""
    if embed_audio > 0:
        note = (f"{embedded} clip(s) embedded in the page (--embed-audio {embed_audio}): the first "
                "items a run got wrong, then the first others; the rest are linked.")
    return {"runs": [{"name": e.name, "no_audio": na} for e, na in zip(runs, no_audio)],
            "items": shown, "total": total, "max_items": max_items, "embedded": embedded,
            "embed_note": note}


def _embed(items: list[dict], n: int) -> int:
    """Embed the clips of the first `n` wrong items, then of the first right ones."""
    order = [it for it in items if it["wrong"]] + [it for it in items if not it["wrong"]]
    done = 0
    for it in order:
        if done >= n:
            break
        path = it["_path"]
        if not path or not Path(path).is_file():
            continue
        mime = _MIME.get(Path(path).suffix.lower(), "application/octet-stream")
        it["audio"] = f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
        it["embedded"] = True
        done += 1
    return done


def browser_html(data: dict) -> str:
    """The section: filters, a sort, the item table (filled in by the inline script)."""
    # every "<" escaped: "</script>" or "<!--" in a question would otherwise end or confuse the
    # script element (a "<" only occurs inside JSON strings, where \u003c reads back as "<")
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    left = data["total"] - len(data["items"])
    cap = (f"{len(data['items'])} of {data['total']} items are in the page (at most "
           f"{data['max_items']}); {left} left out." if left else
           f"All {data['total']} items are in the page (at most {data['max_items']}).")
    note = f" {data['embed_note']}" if data["embed_note"] else ""
    return f"""<section id="browser">
<h2>Item browser</h2>
<p class="caption">{cap}{note} Clips are linked relative to this file. "Answered without audio":
a run with silent or no audio (<code>--audio silence|none --reference</code>) got it right.
"Wrong" and "models disagree" count the runs that heard the item's own clip (not the
<code>--audio silence|none|mismatched</code> controls). Sorting by confidence: the
mean probability the runs gave their picks.</p>
<div id="b-controls">
<label><input type="checkbox" id="f-wrong"> wrong (any run that heard the clip)</label>
<label><input type="checkbox" id="f-disagree"> models disagree</label>
<label><input type="checkbox" id="f-noaudio"> answered without audio</label>
<label>subset <select id="f-subset"><option value="">all</option></select></label>
<label>question type <select id="f-type"><option value="">all</option></select></label>
<label>sort <select id="f-sort"><option value="file">file order</option>
<option value="conf-asc">confidence, lowest first</option>
<option value="conf-desc">confidence, highest first</option></select></label>
<span id="b-count"></span>
</div>
<table id="b-items"><thead><tr><th>item</th><th>option</th>{_run_headers(data)}</tr></thead>
<tbody></tbody></table>
<script type="application/json" id="b-data">{payload}</script>
<style>{_CSS}</style>
<script>{_JS}</script>
</section>"""


def _run_headers(data: dict) -> str:
    from html import escape
    return "".join(f"<th>{escape(r['name'])}</th>" for r in data["runs"])


_CSS = """#b-controls label{margin-right:1em}#b-items td{vertical-align:top;text-align:left}
#b-items tr.answer td.opt{font-weight:bold}#b-items td.pick{background:#dfd}#b-items td.pick.bad{background:#fdd}
#b-items tr.first td{border-top:2px solid #888}#b-items .q{max-width:28em}#b-items .meta{color:#666;font-size:0.85em}"""

# The rows are built with textContent and attributes only, never innerHTML: questions and
# options are dataset text.
_JS = r"""(function(){
var D=JSON.parse(document.getElementById('b-data').textContent);
var tb=document.querySelector('#b-items tbody'),$=function(i){return document.getElementById(i)};
function fill(sel,vals){vals.forEach(function(v){var o=document.createElement('option');o.value=v;o.textContent=v;sel.appendChild(o)})}
function uniq(k){var s={};D.items.forEach(function(it){if(it[k])s[it[k]]=1});return Object.keys(s).sort()}
fill($('f-subset'),uniq('subset'));fill($('f-type'),uniq('type'));
function conf(it){var s=0,n=0;it.picks.forEach(function(p,k){var pr=it.probs[k];if(p!==null&&pr&&pr[p]!==null){s+=pr[p];n++}});return n?s/n:null}
function el(t,txt,cls){var e=document.createElement(t);if(txt!==undefined)e.textContent=txt;if(cls)e.className=cls;return e}
function render(){
var f={w:$('f-wrong').checked,d:$('f-disagree').checked,na:$('f-noaudio').checked,s:$('f-subset').value,t:$('f-type').value};
var its=D.items.filter(function(it){return(!f.w||it.wrong)&&(!f.d||it.disagree)&&(!f.na||it.no_audio_right)&&(!f.s||it.subset===f.s)&&(!f.t||it.type===f.t)});
var so=$('f-sort').value;
if(so!=='file'){its=its.slice().sort(function(a,b){var x=conf(a),y=conf(b);if(x===null)return 1;if(y===null)return -1;return so==='conf-asc'?x-y:y-x})}
tb.textContent='';
its.forEach(function(it){
var cs=it.choices.length?it.choices:['(no options recorded)'],n=cs.length;
cs.forEach(function(c,i){
var tr=el('tr');tr.dataset.id=it.id;if(i===0)tr.className='first';if(i===it.answer)tr.classList.add('answer');
if(i===0){var td=el('td');td.rowSpan=n;td.className='q';
td.appendChild(el('div',it.id+' \u00b7 '+it.subset+(it.type?' \u00b7 '+it.type:''),'meta'));
td.appendChild(el('div',it.question||'(question not available: data file not found)'));
if(it.audio){var a=el('audio');a.controls=true;a.preload='none';a.src=it.audio;td.appendChild(a)}
tr.appendChild(td)}
tr.appendChild(el('td',String.fromCharCode(65+i)+'. '+c+(i===it.answer?'  \u2713 answer':''),'opt'));
D.runs.forEach(function(r,k){var pr=it.probs[k],p=it.picks[k];
var td=el('td',(pr&&pr[i]!==null&&pr[i]!==undefined?pr[i].toFixed(3):'')+(p===i?' \u25c0 pick':''));
if(p===i)td.className='pick'+(i===it.answer?'':' bad');tr.appendChild(td)});
tb.appendChild(tr)})});
$('b-count').textContent=its.length+' of '+D.items.length+' items shown';
}
['f-wrong','f-disagree','f-noaudio','f-subset','f-type','f-sort'].forEach(function(i){$(i).addEventListener('change',render)});
render();
})();"""
