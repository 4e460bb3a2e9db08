"""The simulation replays the loop end to end: results.json, curves.png, the printed tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from batch_jobs import simulate
from batch_jobs.datasets import load_dataset
from batch_jobs.sim_report import auc, labels_to_reach, monotone
from model.training import TrainConfig
from postclf_errors import InvalidInputError

TINY = [
    "--d",
    "16",
    "--epochs",
    "2",
    "--finetune-epochs",
    "2",
    "--mc-samples",
    "3",
    "--no-calibrate",
]


def _run(data_dir: Path, out: Path, *extra: str) -> None:
    simulate.main(
        [
            "--dataset", "reviews_small", "--data-dir", str(data_dir), "--out", str(out),
            "--strategies", "random,margin+kmeans+balance", "--initial", "60",
            "--query-size", "10", "--steps", "2", "--seeds", "1", "--quiet", *TINY,
            "--cache-dir", str(out.parent / "cache"), *extra,
        ]
    )  # fmt: skip


def test_two_steps_on_the_fixture_write_results_plot_and_table(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(data_dir, tmp_path / "a")
    printed = capsys.readouterr().out
    assert "random" in printed and "margin+kmeans+balance" in printed and "full data" in printed
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    assert set(results) >= {"config", "full", "strategies"}
    s = results["strategies"]["margin+kmeans+balance"]
    assert s["labels"] == [60, 70, 80]
    for key in ("accuracy", "macro_f1", "rare_f1"):
        assert len(s[key]["mean"]) == len(s[key]["std"]) == 3
    assert set(s["seconds_per_step"]) >= {"training", "scoring", "selection"}
    assert set(s["labels_to"]) == {"0.95", "0.98"} and 0.0 <= s["auc"] <= 1.0
    assert results["full"]["labels"] == int(
        np.sum(np.load(data_dir / "reviews_small.npz")["split"] == "train")
    )


def test_same_seed_same_curves(data_dir: Path) -> None:
    ds = load_dataset("reviews_small", data_dir=data_dir)
    cfg = simulate.SimConfig(
        dataset="reviews_small",
        strategies=(simulate.StrategySpec.parse("margin+kcenter"),),
        initial=60,
        query_size=10,
        steps=1,
        seeds=1,
        train=TrainConfig(d=16, max_epochs=2, finetune_max_epochs=2, calibrate=False),
    )
    first = simulate.simulate(ds, cfg, show_progress=False)
    second = simulate.simulate(ds, cfg, show_progress=False)
    assert (
        first["curves"]["margin+kcenter"][0]["accuracy"]
        == second["curves"]["margin+kcenter"][0]["accuracy"]
    )
    assert first["full"][0]["accuracy"] == second["full"][0]["accuracy"]


def test_seed_mnist_preset_on_a_small_slice(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(data_dir / "mnist_seed.npz") as d:  # 300 train / 100 test
        np.savez(
            tmp_path / "mnist_seed.npz",
            x_train=d["x_train"][:300], y_train=d["y_train"][:300],
            x_test=d["x_test"][:100], y_test=d["y_test"][:100],
        )  # fmt: skip
    simulate.main(
        ["--preset", "seed-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
         "--steps", "3", "--seeds", "1", "--epochs", "30", "--finetune-epochs", "30",
         "--strategies", "least_confidence,random", "--self-label", "0.9", "--quiet",
         "--cache-dir", ""]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "published" in printed and "92.25" in printed and "pseudo" in printed
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    cfg = results["config"]
    assert cfg["stop_on"] == "test" and cfg["train"]["family"] == "linear"
    assert cfg["train"]["lr"] == cfg["train"]["finetune_lr"] == 0.1
    assert not cfg["train"]["standardize"]
    assert results["strategies"]["least_confidence"]["labels"] == [10, 20, 30, 40]
    assert results["full"]["labels"] == 300
    selfl = results["strategies"]["least_confidence"]["self_labelled"]
    assert selfl["threshold"] == 0.9 and 0 <= selfl["pseudo_labels_mean"] <= 260


def test_strategy_specs_compose_stages() -> None:
    spec = simulate.StrategySpec.parse("margin+kmeans+balance")
    assert (spec.strategy, spec.diversity, spec.balance) == ("margin", "kmeans", True)
    assert simulate.StrategySpec.parse("bald", diversity="kcenter").label == "bald+kcenter"
    with pytest.raises(InvalidInputError):
        simulate.StrategySpec.parse("nope")
    with pytest.raises(InvalidInputError):
        simulate.StrategySpec.parse("margin+sideways")


def test_curve_summaries() -> None:
    labels, curve = np.array([10, 20, 30]), np.array([0.5, 0.7, 0.9])
    assert labels_to_reach(labels, curve, 0.7) == 20
    assert labels_to_reach(labels, curve, 0.95) is None
    assert auc(labels, curve) == pytest.approx(0.7)


def test_monotone_fit_pools_adjacent_violators() -> None:
    """Known answers: a dip is averaged with what it breaks; a rising curve is unchanged."""
    assert monotone(np.array([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert monotone(np.array([3.0, 1.0, 2.0])).tolist() == [2.0, 2.0, 2.0]
    rising = np.array([0.1, 0.2, 0.2, 0.5])
    assert monotone(rising).tolist() == rising.tolist()
    rng = np.random.default_rng(0)
    noisy = np.linspace(0.5, 0.7, 41) + rng.normal(0, 0.01, 41)
    fit = monotone(noisy)
    assert (np.diff(fit) >= 0).all() and fit.mean() == pytest.approx(noisy.mean())
    # One lucky early step no longer counts as reaching the target.
    labels, spiky = np.array([1, 2, 3, 4, 5]), np.array([0.5, 0.7, 0.5, 0.6, 0.7])
    assert labels_to_reach(labels, spiky, 0.7) == 2
    assert labels_to_reach(labels, monotone(spiky), 0.7) == 5


def test_new_stages_committee_and_stopping_signal_reach_the_report(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(
        data_dir, tmp_path / "b", "--strategies",
        "random,margin_committee+power+kmeans+typical+control+self", "--cold-start-labels", "65",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "seeds present 1" in printed and "to rnd final" in printed and "saving %" in printed
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    s = results["strategies"]["margin_committee+power+kmeans+typical+control+self"]
    assert s["seeds"] == 1 and len(s["stability"]) == 2
    assert all(0.0 <= x <= 1.0 for x in s["stability"])
    assert "pseudo_labels" in s and "steps_below_random_band" in s
    assert len(s["per_seed"][0]["pseudo"]) == 2


def test_full_reference_is_cached_per_data_set_and_protocol(data_dir: Path, tmp_path: Path) -> None:
    _run(data_dir, tmp_path / "a")
    _run(data_dir, tmp_path / "b")
    first = json.loads((tmp_path / "a" / "results.json").read_text())["full"]["per_seed"][0]
    again = json.loads((tmp_path / "b" / "results.json").read_text())["full"]["per_seed"][0]
    assert "cached" not in first and again["cached"] is True
    assert again["accuracy"] == first["accuracy"]
    _run(data_dir, tmp_path / "c", "--pool-limit", "300")  # another protocol: computed afresh
    other = json.loads((tmp_path / "c" / "results.json").read_text())["full"]["per_seed"][0]
    assert "cached" not in other and other["labels"] == 300


def test_degenerate_strategies_are_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"bald.*no dropout") as err:
        _run(data_dir, tmp_path / "d", "--strategies", "random,bald", "--model", "linear")
    assert err.value.field == "strategies"
    ds = load_dataset("reviews_small", data_dir=data_dir)
    one_view = dataclasses.replace(
        ds, views=dataclasses.replace(ds.views, image=None, image_mask=None)
    )
    cfg = simulate.SimConfig("x", (simulate.StrategySpec.parse("kl_committee"),))
    assert "cannot disagree" in (simulate.degenerate(cfg.strategies[0], cfg, one_view) or "")
    assert simulate.degenerate(cfg.strategies[0], cfg, ds) is None
    with pytest.raises(InvalidInputError, match="self-training needs a validation split"):
        _run(data_dir, tmp_path / "s", "--strategies", "margin+self", "--stop-on", "test")


def test_seed_split_runs_merge_into_one_report(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batch_jobs import sim_report

    _run(data_dir, tmp_path / "s0", "--strategies", "random")
    _run(data_dir, tmp_path / "s1", "--strategies", "random", "--first-seed", "1")
    _run(data_dir, tmp_path / "other", "--strategies", "random", "--query-size", "5")
    _run(data_dir, tmp_path / "margin", "--strategies", "margin", "--first-seed", "1")
    sim_report.main(
        [str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1"), str(tmp_path / "margin")]
    )
    assert "seeds present 1/2" in capsys.readouterr().out
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    per_seed = merged["strategies"]["random"]["per_seed"]
    assert merged["strategies"]["random"]["seeds"] == 2 and per_seed[0] != per_seed[1]
    assert merged["strategies"]["margin"]["seeds"] == 1
    assert [f["seed"] for f in merged["full"]["per_seed"]] == [0, 1]  # once per seed
    with pytest.raises(SystemExit, match="differ"):
        sim_report.main([str(tmp_path / "x"), str(tmp_path / "s0"), str(tmp_path / "other")])


def test_merge_fills_settings_older_runs_lack_with_their_defaults(
    data_dir: Path, tmp_path: Path
) -> None:
    """A run made before a setting existed ran with its default: it still merges with a new
    run at that default, and not with one that changed it."""
    from batch_jobs import sim_report

    _run(data_dir, tmp_path / "s0", "--strategies", "random")
    _run(data_dir, tmp_path / "s1", "--strategies", "random", "--first-seed", "1")
    raw = tmp_path / "s0" / "raw.json"
    doc = json.loads(raw.read_text())
    del doc["config"]["self_training"]["per_class"], doc["config"]["random_share"]
    raw.write_text(json.dumps(doc))
    sim_report.main([str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    merged = json.loads((tmp_path / "m" / "raw.json").read_text())
    assert merged["config"]["self_training"]["per_class"] is False
    assert merged["config"]["random_share"] == simulate.SimConfig("", ()).random_share
    _run(data_dir, tmp_path / "pc", "--strategies", "random", "--self-per-class")
    with pytest.raises(SystemExit, match="differ"):
        sim_report.main([str(tmp_path / "x"), str(tmp_path / "s0"), str(tmp_path / "pc")])


def test_self_training_flags_set_its_config_and_nothing_else():
    def cfg(*extra: str) -> simulate.SimConfig:
        argv = ["--dataset", "d", "--strategies", "margin+self", "--out", "o", *extra]
        return simulate.build_config(simulate.parse_args(argv))

    assert cfg().self_training == simulate.SimConfig("", ()).self_training
    st = cfg("--self-precision", "0.8", "--self-max-ratio", "2").self_training
    assert (st.enabled, st.target_precision, st.max_ratio, st.per_class) == (True, 0.8, 2.0, False)
    assert cfg("--self-per-class").self_training.per_class
    assert (
        st.order == "random" and cfg("--self-order", "confident").self_training.order == "confident"
    )
    assert st.weight == 1.0 and cfg("--self-weight", "0.5").self_training.weight == 0.5
    assert st.agreement == "none"
    assert cfg("--self-agreement", "knn").self_training.agreement == "knn"


def _curve(acc: list[float]) -> dict:
    return {
        "labels": [100 * (i + 1) for i in range(len(acc))], "accuracy": acc,
        "macro_f1": acc, "rare_f1": acc, "seconds": {},
    }  # fmt: skip


def test_the_report_pairs_seeds_against_random_with_a_bootstrap_interval() -> None:
    from batch_jobs import sim_report

    rand = [[0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7], [0.5, 0.55, 0.6, 0.75]]
    ahead = [[r[0] + 0.1, r[1] + 0.15, r[2] + 0.1, r[3] + 0.05] for r in rand]
    mixed = [[a - 0.2 for a in rand[0]], ahead[1], ahead[2]]  # seed 0 behind
    raw = {
        "config": {},
        "full": [{"labels": 400, "accuracy": 0.9, "macro_f1": 0.9, "rare_f1": 0.9, "seconds": 1}],
        "curves": {
            "random": [_curve(r) for r in rand], "ahead": [_curve(a) for a in ahead],
            "mixed": [_curve(a) for a in mixed], "one": [_curve(ahead[0])],
        },
    }  # fmt: skip
    s = sim_report.summarise(raw, None)["strategies"]
    vs = s["ahead"]["vs_random"]
    assert vs["seeds_ahead"] == 3 and vs["auc_gain_mean"] > 0
    lo, hi = vs["labels_to_random_final_10_90"]
    assert (
        lo is not None
        and hi is not None
        and lo <= s["ahead"]["labels_to_random_final_monotone"] <= hi
    )
    assert s["mixed"]["vs_random"]["seeds_ahead"] == 2
    assert s["random"]["vs_random"]["auc_gain_mean"] == 0.0
    assert s["one"]["vs_random"] is None  # one seed against three: nothing to pair
    table = sim_report.compact_table({"strategies": s})
    assert "(3/3)" in table and "(2/3)" in table
