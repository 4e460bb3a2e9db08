"""The command-line client against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client.cli import main
from tests.integration.support import DATA, Running, SmallData


def _run(server: Running, *args: str) -> int:
    return main(["--target", f"127.0.0.1:{server.app.port}", *args])


def test_health_classify_labels_and_info(
    server: Running, data: SmallData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(server, "health") == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert _run(server, "classify", str(DATA), "--limit", "7", "--batch", "3") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("post_id,label")
    assert [line.split(",")[0] for line in lines[1:]] == data.post_ids[:7].tolist()
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "post_id,label,assessor_id\n"
        f"{data.post_ids[0]},{data.classes[data.label[0]]},cli\n"
        f"{data.post_ids[1]},not-a-class,cli\n"
    )
    assert _run(server, "submit-labels", str(labels)) == 2  # one rejection
    reply = json.loads(capsys.readouterr().out)
    assert reply["accepted"] == 1 and reply["rejected"][0]["field"] == "labels[1].label"
    assert _run(server, "model-info") == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0001"
    assert _run(server, "list-queries") == 0


def test_health_fails_without_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "0.5", "health"]) == 1


def test_classify_a_parquet_file(
    server: Running, data: SmallData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def column(x: np.ndarray) -> list[list[float] | None]:
        return [None if np.isnan(row).all() else row.tolist() for row in x[:6]]

    table = pa.table(
        {"post_id": data.post_ids[:6], "image": column(data.image), "text": column(data.text)}
    )
    path = tmp_path / "posts.parquet"
    pq.write_table(table, path)
    assert _run(server, "classify", str(path), "--values") == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == data.post_ids[:6].tolist()


def test_a_missing_or_unreadable_posts_file_is_a_clear_error(
    server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(server, "classify", str(tmp_path / "nope.npz")) == 1
    assert "no such file" in capsys.readouterr().err
    odd = tmp_path / "posts.txt"
    odd.write_text("x")
    assert _run(server, "classify", str(odd)) == 1
    assert "unsupported file type" in capsys.readouterr().err
