"""Exports for challenge organisers and other scorers (`aqa export ...`).

- `dcase2025`, `dcase2026` (the same shape): a CSV with one row per question of the evaluated
  file: the question id and the chosen option exactly as the question file writes it (the
  record's `meta.original_choices`, letter prefix and all). The header is ``question,answer``
  by default (`--header` changes it): the organisers' example file could not be read, and a
  participant's published 2025 system writes that header with the option string of the
  question file's ``choice`` list as the answer (github.com/HuffmanJoey/dcase25_t5_EchoTwin-QA,
  evaluate.py, ``csv.DictWriter(..., fieldnames=["question", "answer"])``). No 2026 example
  was found; 2026 gets the same header. The first column is the question's id by default; that
  participant's code writes the question file's name without ``.json`` instead (``jp.stem``), and
  `--question-column file` does the same. The two agree when every file is named after its
  question's id; where they differ the export says how many differ, since the organisers' own
  key could not be checked. An incomplete set (a question without a prediction,
  or whose prediction could not be parsed) is refused, and so is a question file with a line
  that is not a usable record: a submission must answer every question.
- `mmau`: the benchmark's own JSON with the chosen option's original text on every item under
  two keys: ``model_output``, the key MMAU's evaluation.py reads (it skips items without it),
  and ``model_prediction``, the key its README names. Source: github.com/Sakshi113/MMAU at
  110127f, evaluation.py (``output_key = 'model_output'``) and README.md ("an additional key
  named 'model_prediction'"). The export also reports the accuracy under MMAU's own matching
  rule (`mmau_match`) beside aqa's, so that a number can be compared with the leaderboard.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import NamedTuple

from aqa.io import UserError, atomic_write_text, write_json, write_jsonl

log = logging.getLogger(__name__)

#: The DCASE submission header (see the module docstring for its source).
DEFAULT_HEADER = ("question", "answer")
#: What the first column of a DCASE submission can hold (see the module docstring).
QUESTION_COLUMNS = ("id", "file")


class IncompleteSubmission(UserError):
    pass


def _eval_dir_file(pred_dir: Path, name: str) -> Path:
    """A file an `aqa eval` folder holds; a UserError naming the folder when it is not there."""
    if not pred_dir.is_dir():
        raise UserError(f"{pred_dir}: no such folder (expected the output folder of `aqa eval`)")
    path = pred_dir / name
    if not path.is_file():
        raise UserError(f"{pred_dir}: not an `aqa eval` output folder (no {name})")
    return path


def _records_for(pred_dir: Path, questions: str | None, allow_outside_root: bool):
    """The evaluated questions, read strictly: a broken line or a refused record in the
    question file would otherwise vanish before the completeness check."""
    from aqa.data.records import load_all_records

    if questions:
        data = questions
    else:
        config = _eval_dir_file(pred_dir, "eval_config.json")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))["data"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{config}: cannot read the evaluated data file from it ({e})") from None
    return load_all_records(data, allow_outside_root=allow_outside_root, require_answer=False), data


def _predictions(pred_dir: Path) -> dict:
    from aqa.eval.metrics import load_predictions

    if not pred_dir.is_file():
        _eval_dir_file(pred_dir, "predictions.jsonl")
    return {r["id"]: r for r in load_predictions(pred_dir)}


def original_choice(record, index: int) -> str:
    """The option at `index` of the record's choices, as the source file wrote it. Where the
    converter merged repeated options ("A. dog" and "C. dog") and the source's answer is one
    of them, that one: a scorer comparing strings with the answer must see the answer's."""
    original = record.meta.get("original_choices")
    if not original:
        return record.choices[index]
    index_of = record.meta.get("choice_index_of")
    if not index_of:
        return original[index]
    merged = [original[i] for i, j in enumerate(index_of) if j == index]
    answer = record.meta.get("original_answer")
    if len(merged) > 1 and isinstance(answer, str):
        for same in (lambda c: c == answer, lambda c: c.strip() == answer.strip()):
            hit = next((c for c in merged if same(c)), None)
            if hit is not None:
                return hit
    return merged[0]


def question_keys(records, data, column: str = "id") -> tuple[list[str], int]:
    """The submission's first column for each record ("id": the source's question id; "file":
    the question file's name without its suffix, for records converted from one file per
    question), and how many records' two keys differ."""
    if column not in QUESTION_COLUMNS:
        raise ValueError(f"question column must be one of {QUESTION_COLUMNS}, got {column!r}")
    ids = [str(r.meta.get("original_id", r.id)) for r in records]
    stems = [Path(r.meta["file"]).stem if r.meta.get("file") else None for r in records]
    differ = sum(s is not None and s != i for s, i in zip(stems, ids))
    if column == "id":
        return ids, differ
    lacking = [r.id for r, s in zip(records, stems) if s is None]
    if lacking:
        raise UserError(f"{data}: --question-column file needs records converted from one JSON file per question "
                        f"(`aqa data dcase2025`); {len(lacking)} have no source file (e.g. {', '.join(lacking[:3])})")
    seen: dict[str, str] = {}
    for r, s in zip(records, stems):
        if s in seen:
            raise UserError(f"{data}: {seen[s]} and {r.id} come from the same file {s}.json, so the file name cannot "
                            f"key the submission; use --question-column id")
        seen[s] = r.id
    return stems, differ


def export_dcase2025(pred_dir: str | Path, out: str | Path, *, questions: str | None = None,
                     allow_outside_root: bool = False, header: tuple[str, str] = DEFAULT_HEADER,
                     question_column: str = "id") -> Path:
    pred_dir = Path(pred_dir)
    records, data = _records_for(pred_dir, questions, allow_outside_root)
    keys, differ = question_keys(records, data, question_column)
    if differ:
        log.warning("%s: %d question id(s) differ from their file's name; the first column holds the %s "
                    "(--question-column %s for the other)", data, differ,
                    "id" if question_column == "id" else "file name", "file" if question_column == "id" else "id")
    preds = _predictions(pred_dir)
    missing = [r.id for r in records if r.id not in preds]
    unanswered = [r.id for r in records if r.id in preds and preds[r.id].get("pred") is None]
    if missing or unanswered:
        raise IncompleteSubmission(
            f"{pred_dir}: {len(missing)} question(s) of {data} have no prediction and {len(unanswered)} an "
            f"unparsed one (e.g. {', '.join((missing + unanswered)[:5])}); a submission must answer all "
            f"{len(records)}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    for r, key in zip(records, keys):
        pred = preds[r.id]
        if pred["choices"] != r.choices:
            raise UserError(f"{pred_dir}: the options of {r.id} differ from {data}'s; was it evaluated on this file?")
        w.writerow([key, original_choice(r, int(pred["pred"]))])
    return atomic_write_text(out, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# MMAU


_WORD = re.compile(r"\b\w+\b")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mmau_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """Whether MMAU's evaluation.py counts `prediction` right (github.com/Sakshi113/MMAU at
    110127f, `string_match`): its word set (lower-cased ``\\b\\w+\\b`` tokens) is not empty,
    holds every word of the answer, and holds no word of a wrong option, where a wrong option
    is one whose word set differs from the answer's and its words shared with the answer
    do not count. So an option whose words equal the answer's ("dog, barking" for "Dog
    barking") is credited as the answer, which aqa's exact option index does not do."""
    said, right = _words(prediction), _words(answer)
    if not said:
        return False
    wrong: set[str] = set()
    for c in choices:
        words = _words(c)
        if words != right:
            wrong |= words - right
    return right <= said and not (said & wrong)


class MMAUExport(NamedTuple):
    path: Path
    empty: int  # items written without a prediction (scored wrong)
    scored: int  # items with an answer to score against
    aqa_correct: int  # the chosen option is the answer's option (aqa's accuracy)
    mmau_correct: int  # MMAU's evaluation.py would count it right (`mmau_match`)


def _read_mmau_items(path: str | Path, key: str = "id", what: str = "MMAU's JSON list of items") -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(items, list) or not all(isinstance(it, dict) and key in it for it in items):
        raise UserError(f"{path}: expected {what}, each item with {key!r}")
    return items


def export_mmau(pred_dir: str | Path, questions_json: str | Path, out: str | Path, *,
                data: str | None = None, allow_outside_root: bool = False) -> MMAUExport:
    """Write MMAU's JSON with the predictions; returns the file, how many items got no
    prediction (written as an empty string) and both accuracies' counts."""
    pred_dir = Path(pred_dir)
    records, _ = _records_for(pred_dir, data, allow_outside_root)
    by_id = {r.meta.get("original_id", r.id): r for r in records}
    preds = _predictions(pred_dir)
    items = _read_mmau_items(questions_json)
    empty = scored = aqa_correct = mmau_correct = 0
    for item in items:
        rec = by_id.get(item["id"])
        pred = preds.get(rec.id) if rec else None
        if pred is None or pred.get("pred") is None:
            text = ""
            empty += 1
        else:
            text = original_choice(rec, int(pred["pred"]))
        item["model_output"] = item["model_prediction"] = text
        if isinstance(item.get("answer"), str) and isinstance(item.get("choices"), list):
            scored += 1
            aqa_correct += bool(text) and rec is not None and int(pred["pred"]) == rec.answer
            mmau_correct += mmau_match(item["answer"], text, [str(c) for c in item["choices"]])
    if empty:
        log.warning("%d of %d MMAU items have no prediction; written as empty strings (scored wrong)", empty, len(items))
    return MMAUExport(write_json(out, items), empty, scored, aqa_correct, mmau_correct)


# ---------------------------------------------------------------------------------------------
# MMAR, MMAU-Pro, AIR-Bench: each benchmark's file with the predictions its scorer reads


@dataclass
class ScorerExport:
    """What an export wrote and how its benchmark's scorer would score it beside aqa.

    `scored`: items with an answer and a prediction aqa can score; `aqa_correct`: the option
    chosen is the answer's; `scorer_correct`: the scorer's rule credits what was written;
    `credited_wrong`: wrong picks the scorer credits; `uncredited_right`: right picks it does
    not; `undecided`: items the scorer scores by a rule aqa cannot apply here (counted apart,
    in neither accuracy); `empty`: items written without a prediction."""

    benchmark: str
    scorer: str
    path: Path
    items: int = 0
    empty: int = 0
    scored: int = 0
    aqa_correct: int = 0
    scorer_correct: int = 0
    credited_wrong: int = 0
    uncredited_right: int = 0
    undecided: int = 0
    notes: list[str] = field(default_factory=list)
    metrics_path: Path | None = None

    def add(self, aqa_right: bool, scorer_right: bool) -> None:
        self.scored += 1
        self.aqa_correct += aqa_right
        self.scorer_correct += scorer_right
        self.credited_wrong += scorer_right and not aqa_right
        self.uncredited_right += aqa_right and not scorer_right

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("benchmark", "scorer", "items", "empty", "scored", "aqa_correct",
                                           "scorer_correct", "credited_wrong", "uncredited_right", "undecided")}
        d["path"] = str(self.path)
        d["aqa_accuracy"] = self.aqa_correct / self.scored if self.scored else None
        d["scorer_accuracy"] = self.scorer_correct / self.scored if self.scored else None
        d["notes"] = self.notes
        return d

    def write_metrics(self) -> Path:
        """The counts beside the export, ``OUT.metrics.json``, so that the number a scorer
        prints can be set against aqa's later."""
        self.metrics_path = write_json(self.path.with_name(self.path.name + ".metrics.json"), self.to_dict())
        return self.metrics_path

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.items} items" + (f", {self.empty} without a prediction" if self.empty else "")
                 + ")"]
        if self.scored:
            lines.append(f"accuracy over {self.scored} items: aqa {100 * self.aqa_correct / self.scored:.2f}% "
                         f"(the option chosen), {self.scorer} {100 * self.scorer_correct / self.scored:.2f}%")
            if self.credited_wrong:
                lines.append(f"  {self.scorer} credits {self.credited_wrong} wrong pick(s)")
            if self.uncredited_right:
                lines.append(f"  {self.scorer} does not credit {self.uncredited_right} right pick(s)")
        lines += [f"  {n}" for n in self.notes]
        if self.metrics_path:
            lines.append(f"  counts: {self.metrics_path}")
        return "\n".join(lines)


def _evaluated(pred_dir: str | Path, data: str | None, allow_outside_root: bool):
    """{source id: record} of the evaluated file and {record id: prediction}."""
    pred_dir = Path(pred_dir)
    records, _ = _records_for(pred_dir, data, allow_outside_root)
    return {str(r.meta.get("original_id", r.id)): r for r in records}, _predictions(pred_dir)


def _chosen(rec, preds: dict) -> int | None:
    pred = preds.get(rec.id) if rec is not None else None
    if pred is None or pred.get("pred") is None:
        return None
    if pred.get("choices") is not None and pred["choices"] != rec.choices:
        raise UserError(f"the options of {rec.id} differ between the predictions and the evaluated file; "
                        f"was it evaluated on this file?")
    return int(pred["pred"])


def mmar_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """MMAR's rule: github.com/ddlBoJack/MMAR at 3bce090, code/evaluation.py, `string_match`,
    the same code as MMAU's (`mmau_match`): word sets, so an option holding the answer's words
    in another order ("From near to far" for "From far to near") is credited as the answer."""
    return mmau_match(answer, prediction, choices)


def export_mmar(pred_dir: str | Path, questions: str | Path, out: str | Path, *, data: str | None = None,
                allow_outside_root: bool = False) -> ScorerExport:
    """MMAR-meta.jsonl with ``answer_prediction`` (the key code/evaluation.py reads; it skips
    an item without it, so an item without a prediction gets "" and is scored wrong) holding
    the chosen option's text as the file writes it. JSON Lines unless `out` ends in .json,
    the two forms evaluation.py reads."""
    from aqa.io import iter_jsonl

    by_id, preds = _evaluated(pred_dir, data, allow_outside_root)
    items = [obj for _, obj in iter_jsonl(questions)]
    if not all(isinstance(it, dict) and "id" in it for it in items):
        raise UserError(f"{questions}: expected MMAR-meta.jsonl, one JSON object with an 'id' per line")
    res = ScorerExport("MMAR", "MMAR's evaluation.py (its word-set string_match)", Path(out), items=len(items))
    for it in items:
        rec = by_id.get(str(it["id"]))
        k = _chosen(rec, preds)
        text = original_choice(rec, k) if k is not None else ""
        res.empty += k is None
        it["answer_prediction"] = text
        if isinstance(it.get("answer"), str) and isinstance(it.get("choices"), list):
            res.add(k is not None and k == rec.answer, mmar_match(it["answer"], text, [str(c) for c in it["choices"]]))
    if str(out).endswith(".json"):
        write_json(out, items)
    else:
        write_jsonl(out, items)
    res.write_metrics()
    return res


#: The categories MMAU-Pro's scorer does not score as multiple choice.
MMAU_PRO_NOT_MC = ("open", "instruction following")


def mmau_pro_match(answer: str, output: str, choices: list[str]) -> bool | None:
    """MMAU-Pro's rule (github.com/sonalkum/MMAUPro at 960e93a, evaluate_mmau_pro_comprehensive.py,
    `evaluate_closedended_with_nvembed` and `calculate_metrics`): the output is matched to the
    option whose NV-Embed-v2 embedding is most similar (argmax of cosine), and that option's
    text must equal the answer string. An output that is one option's exact text is its own
    nearest option, so it is credited exactly when that text is the answer. Any other output
    (an empty one included) is matched by the embedding model, which is not run here: None."""
    if output not in choices:
        return None
    return output == answer


def export_mmau_pro(pred_dir: str | Path, questions: str | Path, out: str | Path, *, data: str | None = None,
                    allow_outside_root: bool = False) -> ScorerExport:
    """MMAU-Pro's test.parquet with the column ``model_output`` (the scorer's default): the
    chosen option's exact text for each converted item, "" elsewhere (open-ended,
    instruction-following and multi-audio items aqa does not answer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_id, preds = _evaluated(pred_dir, data, allow_outside_root)
    try:
        table = pq.read_table(questions)
    except OSError:
        raise
    except Exception as e:
        raise UserError(f"{questions}: not a readable parquet file ({e})") from None
    missing = [c for c in ("id", "category", "choices", "answer") if c not in table.column_names]
    if missing:
        raise UserError(f"{questions}: not MMAU-Pro's test.parquet (no column {', '.join(missing)})")
    rows = table.select(["id", "category", "choices", "answer"]).to_pylist()
    res = ScorerExport("MMAU-Pro", "MMAU-Pro's scorer (nearest option by NV-Embed-v2)", Path(out), items=len(rows))
    outputs, chance, not_verbatim = [], 0, 0
    for row in rows:
        rec = by_id.get(str(row["id"]))
        k = _chosen(rec, preds)
        text = original_choice(rec, k) if k is not None else ""
        outputs.append(text)
        res.empty += k is None
        choices = row["choices"]
        if row["category"] in MMAU_PRO_NOT_MC or not isinstance(choices, list) or len(choices) < 2:
            continue
        verdict = mmau_pro_match(row["answer"], text, [str(c) for c in choices]) if k is not None else None
        if verdict is None:
            chance += 1
            res.undecided += 1
            continue
        not_verbatim += row["answer"] not in choices
        res.add(k == rec.answer, verdict)
    if chance:
        res.notes.append(f"{chance} multiple-choice item(s) the scorer scores are written without a prediction "
                         f"(multi-audio, or not evaluated); it still matches an empty output to its nearest option, "
                         f"so they count by chance, not as wrong (in neither accuracy above)")
    if not_verbatim:
        res.notes.append(f"{not_verbatim} item(s) have an answer that is no option's exact text: the scorer "
                         f"credits no output on them")
    if "model_output" in table.column_names:
        table = table.drop_columns(["model_output"])
    table = table.append_column("model_output", pa.array(outputs, type=pa.string()))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    res.write_metrics()
    return res


#: Inference_Foundation.py's output fields, in its order (github.com/OFA-Sys/AIR-Bench at d5c1bdf).
AIRBENCH_FIELDS = ("path", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer_gt", "task_name",
                   "dataset_name", "response", "uniq_id")
_AIRBENCH_CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def airbench_letter(response: str) -> str | None:
    """The letter score_foundation.py (github.com/OFA-Sys/AIR-Bench at d5c1bdf) reads from a
    response: newlines removed and ends stripped; its first character when that is A-D, else
    its second-to-last ("The answer is A."); None (counted as a failure, outside its accuracy)
    for an empty response, "None", or neither."""
    predict = response.strip().replace("\n", "")
    if not predict or predict == "None":
        return None
    if predict[0] in "ABCD":
        return predict[0]
    if len(predict) > 1 and predict[-2] in "ABCD":
        return predict[-2]
    return None


def airbench_truth(item: dict) -> str | None:
    """The answer's letter as score_foundation.py finds it: the first choice equal to
    ``answer_gt``, compared exactly; None where none is (the scorer then stops, exit 1)."""
    for letter, key in zip("ABCD", _AIRBENCH_CHOICES):
        if item.get(key) is not None and item.get(key) == item.get("answer_gt"):
            return letter
    return None


def export_airbench(pred_dir: str | Path, questions: str | Path, out: str | Path, *, data: str | None = None,
                    allow_outside_root: bool = False) -> ScorerExport:
    """Foundation_result JSONL as Inference_Foundation.py writes it, ``response`` the chosen
    option's letter (score_foundation.py reads the first character). Where the chosen text
    appears under two letters, the first: the scorer's answer letter is the first match."""
    by_id, preds = _evaluated(pred_dir, data, allow_outside_root)
    items = _read_mmau_items(questions, key="uniq_id", what="AIR-Bench's Foundation_meta.json")
    res = ScorerExport("AIR-Bench Foundation", "AIR-Bench's score_foundation.py (the response's first letter)",
                       Path(out), items=len(items))
    rows, stopper = [], 0
    for it in items:
        rec = by_id.get(str(it["uniq_id"]))
        k = _chosen(rec, preds)
        truth = airbench_truth(it)
        response = ""
        if k is not None and truth is None:
            # A response here would stop score_foundation.py (exit 1) before it prints anything.
            stopper += 1
        elif k is not None:
            text = original_choice(rec, k)
            response = next((lt for lt, key in zip("ABCD", _AIRBENCH_CHOICES) if it.get(key) == text), "")
            if not response:
                raise UserError(f"{questions}: item {it['uniq_id']} has no choice {text!r}; were the predictions "
                                f"made on a conversion of this file?")
        res.empty += response == ""
        row = {f: it.get(f) for f in AIRBENCH_FIELDS if f != "response"}
        row["response"] = response
        rows.append({f: row[f] for f in AIRBENCH_FIELDS})
        if response:
            res.add(k == rec.answer, airbench_letter(response) == truth)
    if res.empty:
        res.notes.append(f"{res.empty} item(s) written without a response: score_foundation.py counts them as "
                         f"failures, outside its accuracy's denominator (aqa's above leaves them out too)")
    if stopper:
        res.notes.append(f"{stopper} of them: their answer_gt is no choice's exact text, and a response would stop "
                         f"score_foundation.py (exit 1)")
    write_jsonl(out, rows)
    res.write_metrics()
    return res


# ---------------------------------------------------------------------------------------------
# Command line


def _header(text: str) -> tuple[str, str]:
    cols = tuple(c.strip() for c in text.split(","))
    if len(cols) != 2 or not all(cols):
        raise argparse.ArgumentTypeError(f"expected two column names such as question,answer; got {text!r}")
    return cols  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write submission files for challenges and other scorers")
    esub = p.add_subparsers(dest="export_command", required=True)
    for edition in ("2025", "2026"):  # the two editions' submissions have the same shape
        d = esub.add_parser(f"dcase{edition}", help=f"DCASE {edition} Task 5 submission CSV (question id, chosen option)")
        d.add_argument("pred_dir")
        d.add_argument("-o", "--output", required=True)
        d.add_argument("--questions", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
        d.add_argument("--header", type=_header, default=DEFAULT_HEADER,
                       help="the CSV's two column names (default question,answer, as a participant's "
                            "published 2025 submission writes; the organisers' example could not be read)")
        d.add_argument("--question-column", choices=QUESTION_COLUMNS, default="id",
                       help="first column: the question's id (default) or its question file's name without "
                            ".json, as a participant's published 2025 code writes; the same when files are "
                            "named by id")
        d.add_argument("--allow-outside-root", action="store_true")
        d.set_defaults(func=_run_dcase)
    m = esub.add_parser("mmau", help="MMAU JSON with model_output (and model_prediction), for MMAU's evaluation.py")
    m.add_argument("pred_dir")
    m.add_argument("--questions", required=True, help="the original mmau-test-mini.json (or test) file")
    m.add_argument("--data", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--allow-outside-root", action="store_true")
    m.set_defaults(func=_run_mmau)
    for name, what, questions, fn in (
            ("mmar", "MMAR-meta.jsonl with answer_prediction, for MMAR's code/evaluation.py", "MMAR-meta.jsonl",
             export_mmar),
            ("mmau-pro", "MMAU-Pro's test.parquet with model_output, for evaluate_mmau_pro_comprehensive.py",
             "MMAU-Pro's test.parquet", export_mmau_pro),
            ("airbench", "AIR-Bench Foundation results JSONL (response: the option's letter), for score_foundation.py",
             "Foundation_meta.json", export_airbench)):
        b = esub.add_parser(name, help=what)
        b.add_argument("pred_dir")
        b.add_argument("--questions", required=True, help=f"the original {questions}")
        b.add_argument("--data", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
        b.add_argument("-o", "--output", required=True)
        b.add_argument("--allow-outside-root", action="store_true")
        b.set_defaults(func=_run_scorer_export, export=fn)


def _run_scorer_export(args) -> int:
    r = args.export(args.pred_dir, args.questions, args.output, data=args.data,
                    allow_outside_root=args.allow_outside_root)
    print(r.summary())
    return 0


def _run_dcase(args) -> int:
    try:
        out = export_dcase2025(args.pred_dir, args.output, questions=args.questions,
                               allow_outside_root=args.allow_outside_root, header=args.header,
                               question_column=args.question_column)
    except IncompleteSubmission as e:
        print(f"refused: {e}")
        return 1
    print(f"wrote {out}")
    return 0


def _run_mmau(args) -> int:
    r = export_mmau(args.pred_dir, args.questions, args.output, data=args.data,
                    allow_outside_root=args.allow_outside_root)
    print(f"wrote {r.path}" + (f" ({r.empty} item(s) without a prediction)" if r.empty else ""))
    if r.scored:
        print(f"accuracy over {r.scored} items: aqa {100 * r.aqa_correct / r.scored:.2f}% (the option chosen), "
              f"MMAU's evaluation.py {100 * r.mmau_correct / r.scored:.2f}% (its word-set match)")
    return 0
