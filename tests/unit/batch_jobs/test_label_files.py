"""Label files: our filled query.csv and Label Studio's export, each bad row with its reason."""

from __future__ import annotations

import json

import pytest

from batch_jobs import label_studio
from batch_jobs.label_files import read_labels_file
from postclf_errors import InvalidInputError
from store.ledger import QueryItem, QueryRecord
from store.records import LabelRow


def test_csv_rows_each_good_or_with_a_reason(tmp_path):
    f = tmp_path / "query.csv"
    f.write_text(
        "query_id,rank,post_id,label,assessor_id\n"
        "q1,0,p1,Dresses,ann\n"
        "q1,1,p2,,ann\n"
        "q1,2,p3,Knits,\n"
        f"q1,3,p4,Knits,{'x' * 129}\n"
        "q1,4,p5,Knits,bo\tb\n"
        "q1,5,,Knits,ann\n"
        "q1,6,p7,Knits,ann,extra\n"
    )
    labels, problems = read_labels_file(f)
    assert labels == [LabelRow("p1", "ann", "Dresses", "q1")]
    assert [p.split(":")[0] for p in problems] == [f"line {i}" for i in range(3, 9)]
    assert "not answered" in problems[0] and "longer than 128" in problems[2]
    assert "control characters" in problems[3]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.csv", "post_id,label\n", "assessor_id"),
        ("a.json", "{oops", "not JSON"),
        ("a.json", '{"tasks": []}', "list of tasks"),
    ],
)
def test_unreadable_files_are_one_clear_error(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        read_labels_file(tmp_path / name)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_labels_file(tmp_path / "missing.csv")


def test_label_studio_round_trip(tmp_path):
    query = QueryRecord("q1", "2026-03-01", "", "v0001", "margin", {}, "open", None, 2)
    items = [
        QueryItem(0, "p1", -0.1, "Knits", 0.6, "top-score"),
        QueryItem(1, "p2", -0.2, None, None, ""),
    ]
    tasks = label_studio.tasks(query, items)
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["Knits"]}
    assert "predictions" not in tasks[1]
    config = label_studio.label_config(["Knits", 'A "quoted" class'])
    assert '<Choice value="Knits"/>' in config and "<Choice value='A \"quoted\" class'/>" in config
    ann = {
        "completed_by": {"id": 3, "email": "ann@x"},
        "result": tasks[0]["predictions"][0]["result"],
    }
    tasks[0]["annotations"] = [
        ann,
        {"was_cancelled": True, "completed_by": 4},
        {"completed_by": 5, "result": []},
    ]
    tasks.append({"data": {}})
    f = tmp_path / "export.json"
    f.write_text(json.dumps(tasks))
    labels, problems = read_labels_file(f)
    assert labels == [LabelRow("p1", "ann@x", "Knits", "q1")]
    assert problems == [
        "tasks[0].annotations[1]: skipped by the annotator (was_cancelled)",
        "tasks[0].annotations[2]: expected one 'label' choice, found 0",
        "tasks[1]: no annotations (not labeled yet)",
        "tasks[2]: data.post_id is missing or not a string",
    ]
