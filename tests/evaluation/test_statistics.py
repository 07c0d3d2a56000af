"""Seed-level study statistics: hand/scipy values, calibration by simulation, tidy-table validation, `medtransfer stats`."""

import csv

import numpy as np
import pytest
from scipy import stats

from medtransfer import cli
from medtransfer.evaluation.statistics import (COMPARISON_COLUMNS, StatisticsError, analyse_table, compare_cells,
                                               holm, mean_ci, paired_over_seeds, paired_wilcoxon, read_results_table,
                                               rejection_rates, simulated_results, unit_observations)


def test_holm_matches_a_hand_example():
    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → monotone 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([None, 0.01, float("nan")]) == [None, 0.01, None]  # missing tests are not counted
    assert holm([]) == []


def test_mean_ci_uses_the_t_distribution():
    values = [0.6, 0.7, 0.8, 0.75]
    out = mean_ci(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert out["mean"] == pytest.approx(0.7125) and out["ci_high"] - out["mean"] == pytest.approx(half)
    assert mean_ci([0.5])["ci_low"] is None and mean_ci([])["mean"] is None
    assert mean_ci([0.5, float("nan"), 0.7])["n"] == 2


def test_old_wilcoxon_pairs_by_key():
    a = {("c1", 0): 0.8, ("c2", 0): 0.7, ("c3", 0): 0.9, ("c1", 1): 0.85, ("c2", 1): 0.6, ("extra", 0): 0.1}
    b = {("c1", 0): 0.7, ("c2", 0): 0.72, ("c3", 0): 0.6, ("c1", 1): 0.7, ("c2", 1): 0.55}
    out = paired_wilcoxon(a, b)
    keys = sorted(b)
    assert out["n_pairs"] == 5 and out["p"] == pytest.approx(stats.wilcoxon([a[k] - b[k] for k in keys]).pvalue)
    assert paired_wilcoxon({1: 0.5, 2: 0.5}, {1: 0.5, 2: 0.5})["p"] == 1.0
    assert paired_wilcoxon({1: 0.5}, {1: 0.4})["p"] is None


def test_paired_over_seeds_is_scipys_paired_t_test_of_per_seed_means():
    rng = np.random.default_rng(3)
    a, b = {}, {}
    for seed in range(4):
        for case in range(10):
            b[(f"c{case}", seed)] = 0.6 + 0.01 * case + rng.normal(0, 0.05)
            a[(f"c{case}", seed)] = b[(f"c{case}", seed)] + 0.02 + rng.normal(0, 0.05)
    del a[("c0", 3)]  # seed 3 compares the 9 cases both arms have
    b[("c5", 1)] = float("nan")
    out = paired_over_seeds(a, b)
    means_a = [np.mean([a[(f"c{c}", s)] for c in range(10) if (f"c{c}", s) in a and not np.isnan(b[(f"c{c}", s)])])
               for s in range(4)]
    means_b = [np.mean([b[(f"c{c}", s)] for c in range(10) if (f"c{c}", s) in a and not np.isnan(b[(f"c{c}", s)])])
               for s in range(4)]
    expected = stats.ttest_rel(means_a, means_b)
    assert out["p"] == pytest.approx(expected.pvalue) and out["n_seeds"] == 4 and out["n_units"] == 38
    interval = expected.confidence_interval()
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert out["estimate"] == pytest.approx(np.mean(np.subtract(means_a, means_b)))


def test_the_issues_busbra_example_is_not_significant_at_the_seed_level():
    """3 seeds, per-seed differences +0.044, +0.140, +0.053 over 129 cases: the old test says p ≈ 1e-20."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, diff in enumerate((0.044, 0.140, 0.053)):
        noise = rng.normal(0, 0.16, 129)
        base = 0.6 + rng.normal(0, 0.15, 129)
        rows += [{"strategy": "scratch", "fraction": 0.05, "seed": seed, "case": i, "dice": d} for i, d in enumerate(base)]
        rows += [{"strategy": "encoder", "fraction": 0.05, "seed": seed, "case": i, "dice": d}
                 for i, d in enumerate(base + diff + noise - noise.mean())]
    cells = unit_observations(rows)
    new = paired_over_seeds(cells[("", "encoder", 0.05)], cells[("", "scratch", 0.05)])
    old = paired_wilcoxon(cells[("", "encoder", 0.05)], cells[("", "scratch", 0.05)])
    assert new["p"] == pytest.approx(stats.ttest_1samp([0.044, 0.140, 0.053], 0).pvalue) and 0.1 < new["p"] < 0.15
    assert old["n_pairs"] == 387 and old["p"] < 1e-10


def test_calibration_new_test_holds_alpha_where_the_old_one_does_not():
    """A true null with a run-level sd of 0.03 Dice (fast version of benchmarks/statistics_calibration.py)."""
    rates = rejection_rates(np.random.default_rng(1), 300, n_cases=20, n_seeds=3, run_sd=0.03)
    assert rates["new"] < 0.12  # nominal 0.05; 300 studies: SE ≈ 0.013
    assert rates["old"] > 0.25  # the (case, seed)-pair test is anti-conservative: the test can fail
    power = rejection_rates(np.random.default_rng(2), 200, n_cases=20, n_seeds=5, run_sd=0.0, effect=0.03)
    assert power["new"] > 0.6  # and the new test still finds a real +0.03 Dice
    assert rejection_rates(np.random.default_rng(3), 20, n_seeds=2)["new"] is None  # no test with 2 seeds


def test_named_pairs_and_baseline_lookup():
    rng = np.random.default_rng(4)
    rows = []
    for objective, strategy, shift in (("none", "scratch", 0), ("conrec", "encoder", 0.05),
                                       ("conrec", "encoder_frozen", 0.0), ("sup", "encoder", 0.02)):
        rows += [{**r, "objective": objective, "strategy": strategy}
                 for r in simulated_results(rng, n_cases=8, n_seeds=3, effect=shift) if r["strategy"] == "encoder"]
    cells = unit_observations(rows)
    result = compare_cells(cells, "scratch", pairs=[("encoder", "encoder_frozen"), ("conrec/encoder", "sup/encoder")])
    names = [(r["objective"], r["strategy"], r["baseline"]) for r in result["comparisons"]]
    assert names == [("conrec", "encoder", "scratch"), ("conrec", "encoder_frozen", "scratch"),
                     ("sup", "encoder", "scratch"), ("conrec", "encoder", "encoder_frozen"),
                     ("conrec", "encoder", "sup/encoder")]
    assert result["skipped"] == ["encoder_frozen has no results under sup: sup/encoder not compared with it"]
    assert "Holm over the 5 comparisons" in result["family"]
    explicit = compare_cells(cells, "scratch", pairs=[("sup/encoder", "conrec/encoder_frozen")])["comparisons"][-1]
    assert (explicit["objective"], explicit["baseline"]) == ("sup", "conrec/encoder_frozen")
    with pytest.raises(StatisticsError, match="'nope' has no results"):
        compare_cells(cells, "scratch", pairs=[("nope", "scratch")])


def _write(path, rows, columns=("strategy", "fraction", "seed", "case", "dice")):
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _table(seeds=(0, 1, 2), fractions=(0.1, 0.5), cases=6):
    rows = []
    for fraction in fractions:
        for seed in seeds:
            for strategy, shift in (("scratch", 0.0), ("encoder", 0.05 + 0.01 * seed)):
                rows += [{"strategy": strategy, "fraction": fraction, "seed": seed, "case": f"c{i}",
                          "dice": round(0.5 + 0.02 * i + shift + 0.003 * seed, 4)} for i in range(cases)]
    return rows


def test_stats_command_writes_comparisons_and_prints_them(tmp_path, capsys):
    results = _write(tmp_path / "results.csv", _table())
    assert cli.main(["stats", str(results), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    written = list(csv.DictReader(open(tmp_path / "out" / "comparisons.csv")))
    assert list(written[0]) == list(COMPARISON_COLUMNS) and len(written) == 2
    expected = stats.ttest_1samp([0.05, 0.06, 0.07], 0)
    assert float(written[0]["estimate"]) == pytest.approx(0.06) and float(written[0]["p"]) == pytest.approx(expected.pvalue)
    assert float(written[0]["p_holm"]) == pytest.approx(min(1, 2 * expected.pvalue))
    assert written[0]["method"] == "paired t-test over seeds (3 seeds)"
    assert "encoder" in printed and "Holm over the 2 comparisons" in printed and "wrote" in printed
    assert cli.main(["stats", str(results), "--output", str(tmp_path / "out")]) == 2  # no silent overwrite
    assert "pass --force" in capsys.readouterr().err


def test_slices_are_averaged_per_volume_before_the_seed_means(tmp_path):
    rows = [{**r, "volume": f"v{int(r['case'][1:]) // 2}"} for r in _table(fractions=(0.1,))]
    result = analyse_table(read_results_table(_write(tmp_path / "r.csv", rows,
                                                     ("strategy", "fraction", "seed", "case", "volume", "dice"))))
    assert result["unit"] == "volume" and result["comparisons"][0]["n_units"] == 3 * 3  # 3 volumes × 3 seeds


@pytest.mark.parametrize("change, message", [
    (lambda rows, path: _write(path, rows, ("strategy", "fraction", "seed", "case", "Dice")),
     "missing column(s) dice; expected columns: strategy, fraction, seed, case, dice"),
    (lambda rows, path: _write(path, [{**rows[0], "dice": "nan"}] + rows[1:]), "1 row(s) without a Dice in [0, 1]"),
    (lambda rows, path: _write(path, [{**rows[0], "dice": ""}] + rows[1:]), "line 2 (scratch, 0.1, seed 0, c0)"),
    (lambda rows, path: _write(path, rows + rows[:2]), "2 duplicate (strategy, fraction, seed, case) row(s)"),
    (lambda rows, path: _write(path, [{**r, "fraction": "ten"} for r in rows[:1]] + rows[1:]), "non-numeric fraction"),
    (lambda rows, path: _write(path, [r for r in rows if r["strategy"] != "scratch"]),
     "baseline 'scratch' is not in the table; strategies: encoder"),
])
def test_bad_tables_get_a_clear_error_naming_the_file(tmp_path, capsys, change, message):
    path = tmp_path / "bad.csv"
    change(_table(), path)
    assert cli.main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "comparisons.csv").exists()


def test_baseline_absent_at_a_fraction_and_a_single_seed_give_no_misleading_number(tmp_path, capsys):
    rows = [r for r in _table() if not (r["strategy"] == "scratch" and r["fraction"] == 0.5)]
    assert cli.main(["stats", str(_write(tmp_path / "r.csv", rows))]) == 0
    out = capsys.readouterr().out
    assert "note: baseline 'scratch' has no results at fraction 0.5: encoder not compared" in out
    assert len(list(csv.DictReader(open(tmp_path / "comparisons.csv")))) == 1

    one_seed = _write(tmp_path / "one.csv", _table(seeds=(0,)))
    assert cli.main(["stats", str(one_seed), "--output", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert "note: too few seeds for a seed-level test: the table has 1 seed(s)" in out
    written = list(csv.DictReader(open(tmp_path / "one" / "comparisons.csv")))
    assert all(r["p"] == "" and r["ci_low"] == "" and r["p_holm"] == "" for r in written)
    assert float(written[0]["estimate"]) == pytest.approx(0.05)
    assert "too few seeds for a seed-level test (1 shared seed; needs ≥ 3)" in written[0]["method"]


def test_a_study_results_csv_leaves_checkpoint_fine_tunes_out(tmp_path, capsys):
    rows = [{**r, "checkpoint_epoch": ""} for r in _table(fractions=(0.1,))]
    rows += [{**r, "checkpoint_epoch": 10, "dice": 0.0} for r in rows if r["strategy"] == "encoder"]
    path = _write(tmp_path / "results.csv", rows, ("strategy", "fraction", "seed", "case", "dice", "checkpoint_epoch"))
    assert cli.main(["stats", str(path)]) == 0
    assert "18 row(s) of checkpoint fine-tunes (checkpoint_epoch set) left out" in capsys.readouterr().out
    written = list(csv.DictReader(open(tmp_path / "comparisons.csv")))
    assert float(written[0]["estimate"]) == pytest.approx(0.06)  # the zero-Dice checkpoint rows are not in it
