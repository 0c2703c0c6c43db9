"""The numbers of the router-comparison experiment: per-run metrics from a run directory and
their aggregation over seeds (mean ± sample standard deviation, and differences to the
baseline router paired by seed).

Everything but `summarize_run_dir` works on plain lists and numpy arrays, so that
tests/python/test_router_comparison.py can check it on hand-made numbers.

Definitions (docs/results.md, "What the numbers mean"):
- late flip rate: the mean over the pairs of consecutive routing records whose earlier record
  is at step >= (1 - LATE_FRACTION) * steps of the top-1 flip rate (or top-k set change rate)
  of each MoE layer;
- late last change: the share of probe tokens whose top-1 expert last changed at a record
  with step > (1 - LAST_CHANGE_FRACTION) * steps;
- steps to target: the first validation step whose loss is <= the baseline router's final
  validation loss of the same seed; when a run never gets there, the run's last step (a
  censored value) and it does not count in `reached`;
- load entropy: H / log E of the first-choice load of the probe set at the last record.
"""

import math

import numpy as np

LATE_FRACTION = 0.25  # flip and change rates over the last 25% of training
LAST_CHANGE_FRACTION = 0.20  # share of tokens whose last change is in the final 20%


def monotone(steps):
    """Indices of the entries to keep from a sequence of steps written by a run that may have
    been resumed: an entry at a step <= an earlier one replaces every earlier entry at that step
    or later (a resumed run repeats the steps after its checkpoint). Returns ascending steps."""
    kept = []
    for i, s in enumerate(steps):
        while kept and steps[kept[-1]] >= s:
            kept.pop()
        kept.append(i)
    return kept


def late_rates(from_steps, rates, total_steps, fraction=LATE_FRACTION):
    """rates [pairs, L] between consecutive records, from_steps [pairs]: per layer the mean
    over the pairs whose earlier record is at step >= (1 - fraction) * total_steps. Raises
    ValueError when no pair qualifies (the run did not record often enough)."""
    rates = np.asarray(rates, dtype=float)
    sel = np.asarray(from_steps) >= (1.0 - fraction) * total_steps
    if not sel.any():
        raise ValueError(f"no pair of routing records in the last {fraction:.0%} of "
                         f"{total_steps} steps (record more often)")
    return rates[sel].mean(axis=0)


def late_change_share(last_steps, total_steps, fraction=LAST_CHANGE_FRACTION):
    """last_steps [L, P] (step of each token's last top-1 change, 0 = never): per layer the
    share of tokens whose last change is at a step > (1 - fraction) * total_steps."""
    last = np.asarray(last_steps)
    return (last > (1.0 - fraction) * total_steps).mean(axis=1)


def entropy_norm(counts):
    """counts [L, E] -> [L] entropy of each row's shares divided by log E (1 = uniform)."""
    c = np.asarray(counts, dtype=float)
    p = c / c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return h / math.log(c.shape[1]) if c.shape[1] > 1 else np.ones(c.shape[0])


def steps_to_target(val_steps, val_losses, target):
    """(step, reached): the first validation step with loss <= target, else (last step, False)."""
    for s, v in zip(val_steps, val_losses):
        if v <= target:
            return int(s), True
    return int(val_steps[-1]), False


def mean_std(values):
    """(mean, sample standard deviation with n - 1; 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ---- aggregation over seeds ----

SCALARS = ("test_bpb", "steps_to_target")  # plus one per corrupted set: f"{name}_bpb"
PER_LAYER = ("late_top1", "late_topk", "late_last_change", "load_entropy")


def add_steps_to_target(runs, baseline):
    """runs: list of dicts with "variant", "seed", "val_steps", "val_losses". Adds
    "steps_to_target" and "reached" to each, the target being the final validation loss of the
    baseline variant's run with the same seed (a seed without a baseline run is an error)."""
    target = {r["seed"]: r["val_losses"][-1] for r in runs if r["variant"] == baseline}
    for r in runs:
        if r["seed"] not in target:
            raise ValueError(f"seed {r['seed']} has no {baseline} run to set the target")
        r["target_loss"] = target[r["seed"]]
        r["steps_to_target"], r["reached"] = steps_to_target(r["val_steps"], r["val_losses"],
                                                             target[r["seed"]])
    return runs


def _metric_values(runs, key, layer):
    out = {}
    for r in runs:
        v = r[key] if layer is None else r[key][layer]
        out[r["seed"]] = float(v)
    return out


def aggregate(runs, variants, baseline, keys, per_layer):
    """Per variant and metric: {"mean", "std", "n", "values" (by seed), "delta_mean",
    "delta_std" (the difference to the baseline variant, paired by seed: mean and sample std
    over the seeds both have)}. A per-layer metric gives one entry per layer under
    f"{key}[{layer}]". `runs` are dicts with "variant", "seed" and the metrics."""
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in variants}
    table = {}
    for v in variants:
        if not by_variant[v]:
            raise ValueError(f"no finished runs of {v}")
        table[v] = {}
        n_layers = len(by_variant[v][0][per_layer[0]]) if per_layer else 0
        names = [(k, None) for k in keys] + [(k, m) for k in per_layer for m in range(n_layers)]
        for key, layer in names:
            vals = _metric_values(by_variant[v], key, layer)
            base = _metric_values(by_variant[baseline], key, layer)
            mean, std = mean_std(list(vals.values()))
            paired = [vals[s] - base[s] for s in sorted(vals) if s in base]
            dmean, dstd = mean_std(paired)
            table[v][key if layer is None else f"{key}[{layer}]"] = {
                "mean": mean, "std": std, "n": len(vals), "values": vals,
                "delta_mean": dmean, "delta_std": dstd, "delta_n": len(paired)}
    return table


def curve_band(curves):
    """curves: list of (steps, values) of one variant's seeds. Returns (steps, mean, std) over
    the steps every curve has (sample std; 0 with one curve)."""
    common = sorted(set.intersection(*[set(int(s) for s in c[0]) for c in curves]))
    rows = []
    for steps, vals in curves:
        lookup = {int(s): float(v) for s, v in zip(steps, vals)}
        rows.append([lookup[s] for s in common])
    a = np.asarray(rows)
    std = a.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return np.asarray(common), a.mean(axis=0), std


# ---- one run directory ----

def summarize_run_dir(run_dir, total_steps, evals):
    """The per-run metrics of a finished run: validation curve, routing-fluctuation numbers
    from trace.h5 (python/routemoe_trace), and the eval results `evals` ({set name: the JSON
    of `routemoe eval`})."""
    import routemoe_trace as rt

    run = rt.load_run(run_dir)
    val = [row for row in run.val if row.get("val_loss") is not None]
    keep = monotone([row["step"] for row in val])
    val = [val[i] for i in keep]
    tr = run.trace
    if tr is None or tr.n_records < 2:
        raise ValueError(f"{run_dir}: fewer than 2 routing records")
    idx = monotone(list(tr.steps))
    steps = np.asarray(tr.steps)[idx]
    top1 = tr.top1()[idx]  # [R, L, P]
    experts = [tr.experts(m)[idx] for m in range(tr.n_moe_layers)]
    flips1 = (top1[1:] != top1[:-1]).mean(axis=2)  # [R-1, L]
    flipsk = np.stack([(np.sort(e[1:], axis=2) != np.sort(e[:-1], axis=2)).any(axis=2).mean(axis=1)
                       for e in experts], axis=1)
    last = np.zeros(top1.shape[1:], dtype=np.int64)
    for r in range(1, len(steps)):
        last[top1[r] != top1[r - 1]] = steps[r]
    counts = np.stack([np.bincount(top1[-1, m], minlength=tr.n_experts)
                       for m in range(tr.n_moe_layers)])
    out = {
        "layer_routers": list(tr.layer_routers),
        "val_steps": [int(r["step"]) for r in val],  # steps completed, as in the trace
        "val_losses": [float(r["val_loss"]) for r in val],
        "flip_steps": [int(s) for s in steps[1:]],
        "flip_top1": flips1.tolist(),
        "late_top1": late_rates(steps[:-1], flips1, total_steps).tolist(),
        "late_topk": late_rates(steps[:-1], flipsk, total_steps).tolist(),
        "late_last_change": late_change_share(last, total_steps).tolist(),
        "load_entropy": entropy_norm(counts).tolist(),
        "load_counts": counts.tolist(),
        "records": int(len(steps)),
        "probe_tokens": int(top1.shape[2]),
    }
    for name, res in evals.items():
        bpb = res.get("bits_per_byte")
        out[f"{name}_bpb"] = float(bpb) if bpb is not None else float(res["loss"]) / math.log(2)
    return out


# ---- the papers' claims ----

def routed_layers(run):
    """The MoE layers where a run's router is not plain top-k (ac's first layer is)."""
    return [m for m, r in enumerate(run["layer_routers"]) if r != "topk"]


def paired_claim(runs, variant, baseline, value):
    """The paired comparison of one variant with the baseline: value(run, baseline_run) gives
    the variant's and the baseline's number for one seed as a pair (a, b). Returns {"mean",
    "std" of a - b over seeds, "lower": seeds with a < b, "n"}."""
    base = {r["seed"]: r for r in runs if r["variant"] == baseline}
    diffs = []
    for r in runs:
        if r["variant"] == variant and r["seed"] in base:
            a, b = value(r, base[r["seed"]])
            diffs.append(a - b)
    mean, std = mean_std(diffs)
    return {"mean": mean, "std": std, "lower": int(sum(d < 0 for d in diffs)), "n": len(diffs)}


def claims(runs, variants, baseline, corrupted):
    """The three claims as paired comparisons with the baseline (negative = the claim's
    direction):
    - fluctuation: the late top-1 flip rate averaged over the layers the variant routes
      itself, minus the baseline's over the same layers (similarity, attention, ac);
    - convergence: steps to the target loss minus the baseline's (ac);
    - robustness: the corruption penalty (corrupted minus clean test bits/byte) minus the
      baseline's, per corrupted set (every variant but the baseline)."""
    out = {"fluctuation": {}, "convergence": {}, "robustness": {}}

    def late(r, b):
        ms = routed_layers(r)
        return float(np.mean([r["late_top1"][m] for m in ms])), float(np.mean([b["late_top1"][m] for m in ms]))

    for v in variants:
        if v == baseline:
            continue
        if routed_layers(next(r for r in runs if r["variant"] == v)):
            out["fluctuation"][v] = paired_claim(runs, v, baseline, late)
        out["convergence"][v] = paired_claim(
            runs, v, baseline, lambda r, b: (r["steps_to_target"], b["steps_to_target"]))
        for c in corrupted:
            out["robustness"][f"{v} {c}"] = paired_claim(
                runs, v, baseline, lambda r, b, c=c: (r[f"{c}_bpb"] - r["test_bpb"],
                                                      b[f"{c}_bpb"] - b["test_bpb"]))
    return out
