"""Ledger: idempotent labels, corrections, conflicts kept, locks, migrations, queries, holdout."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from postclf_errors import InvalidInputError, NotFoundError
from store.ledger import LabelRow, Ledger, QueryItem, hash_holdout
from store.schema import MIGRATIONS


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.db") as led:
        led.add_posts(["p1", "p2", "p3"], "classify")
        yield led


def test_same_label_twice_is_one_label(ledger):
    first = ledger.add_labels([LabelRow("p1", "ann", "Dresses")])
    again = ledger.add_labels([LabelRow("p1", "ann", "Dresses")])
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (0, 1)
    assert ledger.labels() == [("p1", "ann", "Dresses", ledger.holdout_flags(["p1"])[0])]


def test_duplicate_inside_one_batch(ledger):
    got = ledger.add_labels([LabelRow("p1", "ann", "Dresses")] * 3)
    assert (got.accepted, got.duplicates, got.corrections) == (1, 2, 0)


def test_correction_replaces_and_counts_as_accepted(ledger):
    ledger.add_labels([LabelRow("p1", "ann", "Dresses")])
    seq = ledger.label_seq()
    got = ledger.add_labels([LabelRow("p1", "ann", "Knits")])
    assert (got.accepted, got.duplicates, got.corrections) == (1, 0, 1)
    assert [r[2] for r in ledger.labels()] == ["Knits"]
    assert ledger.label_seq() > seq  # a correction is a new label for retraining purposes
    assert ledger.count_labels_since(seq) == 1


def test_conflicting_assessors_are_both_kept(ledger):
    ledger.add_labels([LabelRow("p1", "ann", "Dresses"), LabelRow("p1", "bob", "Knits")])
    assert sorted(r[1:3] for r in ledger.labels()) == [("ann", "Dresses"), ("bob", "Knits")]
    assert ledger.labeled_post_ids() == {"p1"}


def test_labeled_train_posts_counts_posts_not_labels_and_skips_holdout(tmp_path):
    """The cold start's count: three assessors on one post are one post; gate posts none."""
    with Ledger(tmp_path / "l.db") as led:
        led.add_posts(["a", "b"], "seed", holdout=False)
        led.add_posts(["g"], "seed", holdout=True)
        three = [LabelRow("a", who, "Knits") for who in ("ann", "bob", "cy")]
        led.add_labels([*three, LabelRow("b", "ann", "Knits"), LabelRow("g", "ann", "Knits")])
        assert led.count_labels_since(0) == 5
        assert led.labeled_train_posts() == 2


def test_label_for_unknown_post_fails_whole_batch(ledger):
    with pytest.raises(sqlite3.IntegrityError):
        ledger.add_labels([LabelRow("p1", "ann", "Dresses"), LabelRow("nope", "ann", "Knits")])
    assert ledger.labels() == []


def test_posts_keep_first_insert_and_holdout(tmp_path):
    with Ledger(tmp_path / "l.db", holdout_fraction=0.5) as led:
        assert led.add_posts(["a", "b"], "seed", holdout=[True, False]) == 2
        assert led.add_posts(["a", "b", "c"], "classify", holdout=False) == 1
        assert led.holdout_flags(["a", "b", "c"]).tolist() == [True, False, False]
        ids = [f"x{i}" for i in range(2000)]
        led.add_posts(ids, "ingest")
        flags = led.holdout_flags(ids)
        assert flags.tolist() == [hash_holdout(p, 0.5) for p in ids]
        assert 0.45 < flags.mean() < 0.55
        assert led.known_posts(["a", "zz"]).tolist() == [True, False]
        with pytest.raises(NotFoundError):
            led.holdout_flags(["zz"])
        with pytest.raises(InvalidInputError):
            led.add_posts(["q"], "elsewhere")


def test_known_posts_get_only_their_prediction_and_a_race_inserts_nothing_twice(tmp_path):
    """`known` skips the INSERT of posts the caller found; a post another writer inserted
    after that read (passed as not known) is ignored, counted as not new, and keeps its
    own holdout flag. Lengths that differ from post_ids name the argument."""
    with Ledger(tmp_path / "l.db", holdout_fraction=0.5) as led:
        led.add_posts(["a", "raced"], "ingest", holdout=True)
        added = led.add_posts(
            ["a", "raced", "new"], "classify", predicted_labels=["X", "Y", "Z"],
            model_version="v0002", known=[True, False, False],
        )  # fmt: skip
        assert added == 1 and led.holdout_flags(["a", "raced"]).tolist() == [True, True]
        rows = dict(led._read("SELECT post_id, predicted_label FROM posts"))
        assert rows == {"a": "X", "raced": None, "new": "Z"}  # the race keeps its own row
        with pytest.raises(InvalidInputError) as err:
            led.add_posts(["b"], "classify", known=[True, False])
        assert err.value.field == "predicted_labels/known"
        with pytest.raises(InvalidInputError) as err:
            led.add_posts(["b"], "classify", holdout=[True, False])
        assert err.value.field == "holdout"


def test_predictions_update_but_source_is_kept(ledger):
    ledger.add_posts(["p1"], "ingest", predicted_labels=["Knits"], model_version="v0002")
    row = ledger._read(
        "SELECT source, predicted_label, model_version FROM posts WHERE post_id='p1'"
    )
    assert row == [("classify", "Knits", "v0002")]


def test_lock_is_exclusive_and_expires(ledger):
    assert ledger.acquire_lock("nightly", "a", ttl_s=60)
    assert not ledger.acquire_lock("nightly", "b", ttl_s=60)
    assert ledger.acquire_lock("nightly", "a", ttl_s=60)  # renewal by the holder
    assert not ledger.release_lock("nightly", "b")
    assert ledger.release_lock("nightly", "a")
    assert ledger.acquire_lock("nightly", "b", ttl_s=0.05)
    time.sleep(0.1)
    assert ledger.lock_holder("nightly") is None
    assert ledger.acquire_lock("nightly", "c", ttl_s=60)  # expired lock taken over
    assert ledger.lock_holder("nightly")[0] == "c"


def test_lock_under_threads_has_one_winner(tmp_path):
    led = Ledger(tmp_path / "l.db")
    wins = []
    barrier = threading.Barrier(8)

    def grab(i: int) -> None:
        barrier.wait()
        if led.acquire_lock("job", f"w{i}", ttl_s=60):
            wins.append(i)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led.close()
    assert len(wins) == 1


def test_reopen_keeps_data_and_schema_version(tmp_path):
    path = tmp_path / "l.db"
    with Ledger(path) as led:
        led.add_posts(["p1"], "seed")
        led.add_labels([LabelRow("p1", "ann", "Dresses")])
    with Ledger(path, synchronous="NORMAL") as led:
        assert led.schema_version == len(MIGRATIONS)
        assert led.labels()[0][:3] == ("p1", "ann", "Dresses")
        assert led._read("PRAGMA user_version")[0][0] == len(MIGRATIONS)
        assert led._read("PRAGMA journal_mode")[0][0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Ledger(path)


def test_queries_round_trip_and_close(ledger):
    items = [
        QueryItem(0, "p2", 0.9, "Knits", 0.4, "score"),
        QueryItem(1, "p3", 0.8, None, None, "x"),
    ]
    ledger.create_query("q1", "2026-01-01", "v0001", "margin", {"query_size": 2}, items)
    q = ledger.get_query("q1")
    assert (q.status, q.n_items, q.params) == ("open", 2, {"query_size": 2})
    assert ledger.query_for_night("2026-01-01").query_id == "q1"
    assert ledger.query_for_night("2026-01-02") is None
    assert ledger.query_items("q1") == items
    assert ledger.posts_in_open_queries() == {"p2", "p3"}
    ledger.set_query_export("q1", "/x/q1")
    assert ledger.get_query("q1").export_path == "/x/q1"
    assert ledger.close_queries("2000-01-01") == []
    assert ledger.close_queries("9999-01-01") == ["q1"]
    assert ledger.posts_in_open_queries() == set()
    assert [q.query_id for q in ledger.list_queries(status="closed")] == ["q1"]
    with pytest.raises(NotFoundError):
        ledger.get_query("nope")


def test_models_and_job_runs(ledger):
    ledger.record_model("v0001", None, "promoted", {"accuracy": 0.5}, label_seq=3)
    ledger.record_model("v0002", "v0001", "rejected", {"accuracy": 0.1}, reason="worse")
    assert ledger.get_model("v0002").reason == "worse"
    assert [m.status for m in ledger.list_models()] == ["promoted", "rejected"]
    assert ledger.get_model("v0009") is None
    run = ledger.start_job("nightly")
    ledger.finish_job(run, "ok", {"n": 1})
    (got,) = ledger.job_runs("nightly")
    assert (got.status, got.report) == ("ok", {"n": 1})


def test_many_threads_add_labels(tmp_path):
    led = Ledger(tmp_path / "l.db", synchronous="NORMAL")
    led.add_posts([f"p{i}" for i in range(200)], "classify")

    def work(t: int) -> None:
        for i in range(t, 200, 4):
            led.add_labels([LabelRow(f"p{i}", "ann", "A")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(led.labels()) == 200
    led.close()


def test_a_version_1_ledger_migrates_on_open_and_keeps_its_rows(tmp_path):
    import sqlite3

    from store.schema import MIGRATIONS, _statements

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO queries VALUES ('q1', 'n', 't', NULL, 'margin', '{}', 'open', NULL)")
    conn.execute("INSERT INTO query_items VALUES ('q1', 0, 'p1', 0.5, 'A', 0.9, 'top-score')")
    conn.commit()
    conn.close()
    with Ledger(path) as led:
        assert led.schema_version == len(MIGRATIONS) == 2
        (item,) = led.query_items("q1")
        assert (item.post_id, item.kind, item.gold_label) == ("p1", "new", None)


def test_control_answers_join_labels_to_the_control_items_of_their_query(ledger):
    ledger.add_posts(["p2", "p3"], "ingest")
    items = [
        QueryItem(0, "p2", 0.1, "A", 0.5, "top-score", kind="control", gold_label="Dresses"),
        QueryItem(1, "p3", 0.2, "A", 0.5, "top-score"),
    ]
    ledger.create_query("q9", "n", None, "margin", {}, items)
    ledger.add_labels([LabelRow("p2", "ann", "Knits", "q9"), LabelRow("p3", "ann", "Knits", "q9")])
    ledger.add_labels([LabelRow("p2", "bob", "Dresses")])  # no query named: a plain vote
    assert ledger.control_answers() == [("p2", "ann", "Knits", "Dresses")]


def test_close_waits_for_an_operation_in_flight_in_another_thread(tmp_path):
    """Closing a sqlite3 connection another thread is using is a segfault, not an error."""
    ledger = Ledger(tmp_path / "l.db")
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ledger._using():  # as a long read or write would
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert entered.wait(10)
    with pytest.raises(RuntimeError, match="still in use"):
        ledger.close(timeout=0.05)
    release.set()
    t.join(10)
    ledger.close(timeout=10)  # nothing in flight: closes
    assert ledger.post_count() == 0  # a later call opens a fresh connection
    ledger.close()
