"""The routing-fluctuation metrics of docs/analysis.md on a Trace, with the same definitions as
`routemoe trace` (its --json/--csv give the same numbers), and DataFrame views."""

import numpy as np


def flip_rates(trace):
    """Between consecutive records, per MoE layer: {"top1": [R-1, L] share of probe tokens whose
    first expert changed, "topk": [R-1, L] share whose set of k experts changed, "from_step",
    "to_step": [R-1]}."""
    L, R = trace.n_moe_layers, trace.n_records
    top1 = np.zeros((max(R - 1, 0), L))
    topk = np.zeros((max(R - 1, 0), L))
    for m in range(L):
        ex = trace.experts(m)
        if R < 2:
            continue
        top1[:, m] = (ex[1:, :, 0] != ex[:-1, :, 0]).mean(axis=1)
        s = np.sort(ex, axis=2)
        topk[:, m] = (s[1:] != s[:-1]).any(axis=2).mean(axis=1)
    return {"top1": top1, "topk": topk, "from_step": trace.steps[:-1], "to_step": trace.steps[1:]}


def expert_load(trace, record=-1):
    """[L, E] number of probe tokens whose first choice is each expert, at a record."""
    return np.stack([np.bincount(trace.experts(m)[record, :, 0], minlength=trace.n_experts)
                     for m in range(trace.n_moe_layers)])


def load_entropy(trace, normalised=True):
    """[R, L] entropy (nats) of the first-choice load of every record and layer; divided by
    log E when `normalised` (1 = uniform load)."""
    out = np.zeros((trace.n_records, trace.n_moe_layers))
    for r in range(trace.n_records):
        counts = expert_load(trace, r)
        p = counts / counts.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[r] = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    if normalised and trace.n_experts > 1:
        out /= np.log(trace.n_experts)
    return out


def last_change_steps(trace):
    """[L, P]: the step of the record at which each token's first expert last changed (0 when
    it never changed), the StableMoE-style measure (docs/analysis.md)."""
    top1 = trace.top1()  # [R, L, P]
    out = np.zeros(top1.shape[1:], dtype=np.int64)
    for r in range(1, trace.n_records):
        changed = top1[r] != top1[r - 1]
        out[changed] = trace.steps[r]
    return out


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError("the *_frame functions need pandas (Debian: python3-pandas); the "
                          "array functions work without it") from e
    return pandas


def records_frame(trace):
    """One row per record: index, step, epoch, reason, groups."""
    pd = _pandas()
    return pd.DataFrame({"index": np.arange(trace.n_records), "step": trace.steps,
                         "epoch": trace.epochs, "reason": trace.reasons, "groups": trace.groups})


def flips_frame(trace):
    """One row per pair of consecutive records and layer (the columns of flips.csv)."""
    pd = _pandas()
    f = flip_rates(trace)
    rows = [{"layer": m, "from_step": int(f["from_step"][i]), "to_step": int(f["to_step"][i]),
             "top1_flip_rate": f["top1"][i, m], "topk_change_rate": f["topk"][i, m]}
            for i in range(len(f["to_step"])) for m in range(trace.n_moe_layers)]
    return pd.DataFrame(rows)


def metrics_frame(run):
    """A run's metrics.jsonl as (train, val) DataFrames; expert_load stays a list column."""
    pd = _pandas()
    return pd.DataFrame(run.train), pd.DataFrame(run.val)
