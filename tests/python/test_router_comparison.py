#!/usr/bin/env python3
"""The aggregation of the router-comparison experiment (examples/router_comparison/analysis.py)
on hand-made run data, against numbers computed by hand in the comments. Exit 77 (skipped)
without numpy."""

import math
import os
import sys
import unittest

try:
    import numpy as np
except ImportError:
    print("skipped: needs numpy")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples", "router_comparison"))
import analysis  # noqa: E402

# All inputs are a few decimal numbers; the computations are a handful of float64 operations,
# so 1e-12 is far above their rounding (~1e-16 relative) and far below any real mistake.
TOL = 1e-12


def run(variant, seed, test_bpb, late_top1, val_losses):
    return {"variant": variant, "seed": seed, "test_bpb": test_bpb, "late_top1": late_top1,
            "val_steps": [10, 20, 30], "val_losses": val_losses}


class MeanStd(unittest.TestCase):
    def test_sample_std(self):
        # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (3 - 1) = 7/3
        mean, std = analysis.mean_std([1.0, 2.0, 4.0])
        self.assertAlmostEqual(mean, 7 / 3, delta=TOL)
        self.assertAlmostEqual(std, math.sqrt(7 / 3), delta=TOL)

    def test_one_value(self):
        self.assertEqual(analysis.mean_std([5.0]), (5.0, 0.0))

    def test_empty_is_an_error(self):
        with self.assertRaises(ValueError):
            analysis.mean_std([])


class Aggregate(unittest.TestCase):
    def setUp(self):
        # ac's runs are listed in another seed order than topk's: pairing must follow the seed
        self.runs = [
            run("topk", 1, 2.0, [0.10, 0.30], [3.0, 2.6, 2.5]),
            run("topk", 2, 2.2, [0.20, 0.30], [3.0, 2.7, 2.6]),
            run("topk", 3, 2.4, [0.30, 0.30], [3.1, 2.8, 2.7]),
            run("ac", 3, 2.4, [0.10, 0.50], [2.9, 2.7, 2.65]),
            run("ac", 1, 1.9, [0.05, 0.10], [2.8, 2.5, 2.4]),
            run("ac", 2, 2.0, [0.20, 0.60], [3.2, 2.9, 2.8]),
        ]

    def test_means_stds_and_paired_deltas(self):
        t = analysis.aggregate(self.runs, ["topk", "ac"], "topk", ["test_bpb"], ["late_top1"])
        # topk: 2.0, 2.2, 2.4 -> mean 2.2, deviations ±0.2 and 0 -> var 0.08 / 2, std 0.2
        self.assertAlmostEqual(t["topk"]["test_bpb"]["mean"], 2.2, delta=TOL)
        self.assertAlmostEqual(t["topk"]["test_bpb"]["std"], 0.2, delta=TOL)
        self.assertEqual(t["topk"]["test_bpb"]["delta_mean"], 0.0)
        self.assertEqual(t["topk"]["test_bpb"]["delta_std"], 0.0)
        # ac: 1.9, 2.0, 2.4 -> mean 2.1; deviations -0.2, -0.1, 0.3 -> 0.14 / 2 = 0.07
        ac = t["ac"]["test_bpb"]
        self.assertAlmostEqual(ac["mean"], 2.1, delta=TOL)
        self.assertAlmostEqual(ac["std"], math.sqrt(0.07), delta=TOL)
        # paired by seed: 1.9-2.0, 2.0-2.2, 2.4-2.4 = -0.1, -0.2, 0.0 -> mean -0.1, std 0.1
        # (paired by list position it would be -0.5+..., so the seed order matters)
        self.assertAlmostEqual(ac["delta_mean"], -0.1, delta=TOL)
        self.assertAlmostEqual(ac["delta_std"], 0.1, delta=TOL)
        self.assertEqual((ac["n"], ac["delta_n"]), (3, 3))
        self.assertEqual(ac["values"], {3: 2.4, 1: 1.9, 2: 2.0})
        # per layer: layer 1 of ac 0.1, 0.6, 0.5 (seeds 1, 2, 3) -> mean 0.4,
        # deviations -0.3, 0.2, 0.1 -> 0.14 / 2 = 0.07; vs topk 0.3: deltas -0.2, 0.3, 0.2 ->
        # mean 0.1, deviations -0.3, 0.2, 0.1 -> std sqrt(0.07)
        l1 = t["ac"]["late_top1[1]"]
        self.assertAlmostEqual(l1["mean"], 0.4, delta=TOL)
        self.assertAlmostEqual(l1["std"], math.sqrt(0.07), delta=TOL)
        self.assertAlmostEqual(l1["delta_mean"], 0.1, delta=TOL)
        self.assertAlmostEqual(l1["delta_std"], math.sqrt(0.07), delta=TOL)
        # layer 0 of topk: 0.1, 0.2, 0.3 -> 0.2 ± 0.1
        self.assertAlmostEqual(t["topk"]["late_top1[0]"]["mean"], 0.2, delta=TOL)
        self.assertAlmostEqual(t["topk"]["late_top1[0]"]["std"], 0.1, delta=TOL)

    def test_steps_to_target_paired_by_seed(self):
        runs = analysis.add_steps_to_target(self.runs, "topk")
        got = {(r["variant"], r["seed"]): (r["steps_to_target"], r["reached"]) for r in runs}
        # targets (topk's final val loss): seed 1 2.5, seed 2 2.6, seed 3 2.7
        self.assertEqual(got[("topk", 1)], (30, True))
        self.assertEqual(got[("topk", 3)], (30, True))
        self.assertEqual(got[("ac", 1)], (20, True))   # 2.5 <= 2.5 at step 20
        self.assertEqual(got[("ac", 2)], (30, False))  # 2.8 > 2.6: censored at the last step
        self.assertEqual(got[("ac", 3)], (20, True))   # 2.7 <= 2.7 at step 20
        t = analysis.aggregate(runs, ["topk", "ac"], "topk", ["steps_to_target"], [])
        # ac: 20, 30, 20 -> mean 70/3, deviations -10/3, 20/3, -10/3 -> 600/9 / 2 = 100/3
        self.assertAlmostEqual(t["ac"]["steps_to_target"]["mean"], 70 / 3, delta=TOL)
        self.assertAlmostEqual(t["ac"]["steps_to_target"]["std"], math.sqrt(100 / 3), delta=TOL)
        # paired: 20-30, 30-30, 20-30 = -10, 0, -10 -> mean -20/3, deviations -10/3, 20/3,
        # -10/3 -> 600/9 / 2 = 100/3 (the same spread: topk's steps are all 30)
        self.assertAlmostEqual(t["ac"]["steps_to_target"]["delta_mean"], -20 / 3, delta=TOL)
        self.assertAlmostEqual(t["ac"]["steps_to_target"]["delta_std"], math.sqrt(100 / 3),
                               delta=TOL)

    def test_claims(self):
        for r in self.runs:
            r["layer_routers"] = ["topk", "topk"] if r["variant"] == "topk" else ["topk", "ac"]
            pen = 0.1 if r["variant"] == "topk" else {1: 0.05, 2: 0.12, 3: 0.13}[r["seed"]]
            r["wordswap_bpb"] = r["test_bpb"] + pen
        runs = analysis.add_steps_to_target(self.runs, "topk")
        c = analysis.claims(runs, ["topk", "ac"], "topk", ["wordswap"])
        # fluctuation over the layers ac routes itself (layer 1 only): ac 0.1, 0.6, 0.5 against
        # topk's 0.3 -> -0.2, 0.3, 0.2: mean 0.1, std sqrt(0.07), negative in 1 of 3 seeds
        f = c["fluctuation"]["ac"]
        self.assertAlmostEqual(f["mean"], 0.1, delta=TOL)
        self.assertAlmostEqual(f["std"], math.sqrt(0.07), delta=TOL)
        self.assertEqual((f["lower"], f["n"]), (1, 3))
        self.assertNotIn("topk", c["fluctuation"])
        # convergence: -10, 0, -10 (test_steps_to_target_paired_by_seed) -> 2 of 3 lower
        g = c["convergence"]["ac"]
        self.assertAlmostEqual(g["mean"], -20 / 3, delta=TOL)
        self.assertEqual(g["lower"], 2)
        # robustness: penalties 0.05, 0.12, 0.13 against 0.1 -> -0.05, 0.02, 0.03: mean 0,
        # squares 0.0025 + 0.0004 + 0.0009 = 0.0038, / 2 -> std sqrt(0.0019)
        rb = c["robustness"]["ac wordswap"]
        self.assertAlmostEqual(rb["mean"], 0.0, delta=TOL)
        self.assertAlmostEqual(rb["std"], math.sqrt(0.0019), delta=TOL)
        self.assertEqual(rb["lower"], 1)

    def test_missing_baseline_seed_is_an_error(self):
        runs = [r for r in self.runs if not (r["variant"] == "topk" and r["seed"] == 2)]
        with self.assertRaises(ValueError):
            analysis.add_steps_to_target(runs, "topk")


class Rates(unittest.TestCase):
    def test_late_rates(self):
        # records at steps 10, 20, 30, 35, 40 of 40: pairs from 10, 20, 30, 35; the last 25%
        # starts at step 30, so the pairs from 30 and 35: layer 0 (0.3 + 0.1) / 2, layer 1
        # (0.3 + 0.5) / 2
        rates = [[0.5, 0.1], [0.4, 0.2], [0.3, 0.3], [0.1, 0.5]]
        got = analysis.late_rates([10, 20, 30, 35], rates, 40)
        np.testing.assert_allclose(got, [0.2, 0.4], rtol=0, atol=TOL)

    def test_late_rates_without_pairs_is_an_error(self):
        with self.assertRaises(ValueError):
            analysis.late_rates([10, 20], [[0.1], [0.2]], 40)

    def test_late_change_share(self):
        # final 20% of 40 steps: last change strictly after step 32; 0 = never changed
        last = [[0, 40, 35, 32], [38, 10, 0, 32]]
        np.testing.assert_array_equal(analysis.late_change_share(last, 40), [0.5, 0.25])

    def test_entropy_norm(self):
        # uniform -> 1; one expert -> 0; two of four equally -> log 2 / log 4 = 0.5
        got = analysis.entropy_norm([[1, 1, 1, 1], [4, 0, 0, 0], [2, 2, 0, 0]])
        np.testing.assert_allclose(got, [1.0, 0.0, 0.5], rtol=0, atol=TOL)

    def test_steps_to_target(self):
        self.assertEqual(analysis.steps_to_target([10, 20, 30], [3, 2.5, 2.4], 2.5), (20, True))
        self.assertEqual(analysis.steps_to_target([10, 20, 30], [3, 2.5, 2.4], 2.0), (30, False))

    def test_monotone_drops_steps_a_resume_repeated(self):
        # a run killed after step 3 and resumed from its checkpoint at step 1: 2, 3 repeat
        self.assertEqual(analysis.monotone([1, 2, 3, 2, 3, 4]), [0, 3, 4, 5])
        self.assertEqual(analysis.monotone([5, 10, 15]), [0, 1, 2])

    def test_curve_band(self):
        # common steps 10 and 20: means (1+3)/2, (3+5)/2; std of two values a, b is |a-b|/sqrt 2
        steps, mean, std = analysis.curve_band([([10, 20], [1, 3]), ([10, 20, 30], [3, 5, 7])])
        np.testing.assert_array_equal(steps, [10, 20])
        np.testing.assert_allclose(mean, [2, 4], rtol=0, atol=TOL)
        np.testing.assert_allclose(std, [math.sqrt(2), math.sqrt(2)], rtol=0, atol=TOL)


if __name__ == "__main__":
    unittest.main()
