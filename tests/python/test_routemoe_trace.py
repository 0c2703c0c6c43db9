#!/usr/bin/python3
"""The Python package python/routemoe_trace against `routemoe trace` and the files of a real run.

    test_routemoe_trace.py <routemoe> <run dir> <work dir>

The run is the ckpt_trace test's (2 ranks, routers topk, similarity, attention, ac, checkpoints
every 3 steps). Checks:
  - load_run finds the trace, the checkpoints and every metrics.jsonl line;
  - the package's flip rates, top-k change rates, expert load and last-change steps equal the
    numbers `routemoe trace --json` prints (ratios of counts: exactly), its load entropies agree
    to 1e-12 (sums of <= E terms in another order; one token in P moves them by > 1e-3);
  - every checkpoint's /routing record equals the trace record of its step, its per-token AC
    weights equal the trace's per-expert weights expanded (bit for bit);
  - a version-1 trace written from the same records (one group per record, per-token AC
    weights) reads back the same through the package and through `routemoe trace`;
  - a trace left marked "open for writing" by a killed writer reads back through both (plain
    h5py refuses it: the control);
  - the DataFrame views, when pandas is installed (else their ImportError says what to install).
Exit 77 (skipped) without h5py for /usr/bin/python3.
"""

import json
import os
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError:
    print("SKIP: no h5py/numpy for this python3")
    sys.exit(77)

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import routemoe_trace as rt  # noqa: E402

routemoe, run_dir, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def trace_json(path, name):
    out = os.path.join(work, name)
    subprocess.run([routemoe, "trace", path, "--json", out], check=True,
                   stdout=subprocess.DEVNULL)
    (doc,) = json.load(open(out))["runs"]
    return doc


# ---- the run ----
run = rt.load_run(run_dir)
tr = run.trace
print(run)
print(tr)
check(tr is not None and tr.version == 2, "the run has a version-2 trace")
check(len(run.checkpoints) >= 2, "the run has checkpoints")
lines = [l for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
check(len(run.train) + len(run.val) == len(lines), "every metrics.jsonl line is read")
check(all("loss" in r for r in run.train), "training lines carry loss")
check(tr.layer_routers == ["topk", "similarity", "attention", "ac"], f"routers {tr.layer_routers}")
check(tr.routers == ["topk", "similarity", "attention", "ac"], f"configured {tr.routers}")
P, k = len(tr.probe_tokens), tr.top_k
check(tr.experts(3).shape == (tr.n_records, P, k), f"experts shape {tr.experts(3).shape}")

# ---- against routemoe trace --json ----
doc = trace_json(run_dir, "v2.json")
check([r["step"] for r in doc["records"]] == tr.steps.tolist(), "record steps")
check([r["epoch"] for r in doc["records"]] == tr.epochs.tolist(), "record epochs")
check([r["reason"] for r in doc["records"]] == tr.reasons, "record reasons")
flips = rt.flip_rates(tr)
check(len(doc["flips"]) == (tr.n_records - 1) * tr.n_moe_layers > 0, "flip pairs")
for f in doc["flips"]:
    i, m = f["from_record"], f["layer"]
    check(f["top1_flip_rate"] == flips["top1"][i, m], f"top-1 flip rate {f} vs {flips['top1'][i, m]}")
    check(f["topk_change_rate"] == flips["topk"][i, m], f"top-k change {f} vs {flips['topk'][i, m]}")
    check(f["to_step"] == flips["to_step"][i], "pair steps")
load = rt.expert_load(tr)
entropy = rt.load_entropy(tr, normalised=False)
entropy_norm = rt.load_entropy(tr)
for l in doc["load"]:
    m = l["layer"]
    check(l["counts"] == load[m].tolist(), f"load of layer {m}")
    check(abs(l["entropy"] - entropy[-1, m]) <= 1e-12, f"entropy of layer {m}")
for e in doc["load_entropy"]:
    check(abs(e["entropy_norm"] - entropy_norm[e["record"], e["layer"]]) <= 1e-12,
          f"load entropy {e}")
last = rt.last_change_steps(tr)
for lc in doc["last_change"]:
    m = lc["layer"]
    check(abs(lc["mean_step"] - last[m].mean()) <= 1e-12, f"mean last-change step, layer {m}")
    check(lc["never_changed"] == int((last[m] == 0).sum()), f"never changed, layer {m}")

# ---- checkpoints against the trace ----
matched = 0
for path in run.checkpoints:
    ck = rt.open_checkpoint(path)
    (r,) = np.nonzero(tr.steps == ck.step)[0]
    rec = tr.record(r)
    for m, layer in enumerate(ck.routing.layers):
        for key in ("experts", "gates", "probs"):
            check(np.array_equal(layer[key], rec.layers[m][key]), f"{path}: layer{m}/{key}")
        if layer["router"] == "ac":
            M = ck.routing.ac_token_weights(m)
            check(M.shape == (P, tr.d_model), f"{path}: ac_scale shape {M.shape}")
            check(np.array_equal(M, tr.ac_token_weights(m, r)), f"{path}: AC weights of layer {m}")
            w, present = tr.ac_weights(m, r)
            check(w.shape == (tr.groups[r], tr.n_experts, tr.d_model), f"ac_weights {w.shape}")
    matched += 1
check(ck.param_names and ck.param("wte").shape[1] == tr.d_model, "checkpoint tensors")

# ---- a version-1 trace of the same records ----
v1_dir = os.path.join(work, "v1run")
os.makedirs(v1_dir)
v1 = os.path.join(v1_dir, "trace.h5")
with h5py.File(v1, "w", libver="latest") as f, h5py.File(os.path.join(run_dir, "trace.h5"), "r") as src:
    for key, value in src.attrs.items():
        f.attrs[key] = value
    f.attrs["format_version"] = np.int64(1)
    f["probe/tokens"] = tr.probe_tokens
    for r in range(tr.n_records):
        rec = tr.record(r)
        g = f.create_group(f"records/{r:06d}")
        g.attrs["step"], g.attrs["epoch"] = np.int64(rec.step), np.int64(rec.epoch)
        g.attrs["reason"] = np.bytes_(rec.reason)
        for m, layer in enumerate(rec.layers):
            lg = g.create_group(f"layer{m}")
            lg.attrs["router"] = np.bytes_(layer["router"])
            for key in ("experts", "gates", "probs"):
                lg[key] = layer[key]
            if "ac_weights" in layer:
                lg["ac_scale"] = rec.ac_token_weights(m)
old = rt.open_trace(v1)
check(old.version == 1 and old.n_records == tr.n_records, "the version-1 trace opens")
check(np.array_equal(old.top1(), tr.top1()), "version 1: the same choices")
check(np.array_equal(old.ac_token_weights(3, 1), tr.ac_token_weights(3, 1)), "version 1: AC")
old_doc = trace_json(v1, "v1.json")
check(old_doc["flips"] == doc["flips"], "routemoe trace reads the version-1 trace the same")

# ---- a trace whose writer was killed while it had the file open ----
# (HDF5 leaves its "open for writing" mark: plain h5py refuses the file, the package and
# routemoe read it in SWMR-read mode.)
marked = os.path.join(work, "marked", "trace.h5")
os.makedirs(os.path.dirname(marked))
shutil.copy(os.path.join(run_dir, "trace.h5"), marked)
subprocess.run([sys.executable, "-c",
                "import h5py, os, sys; f = h5py.File(sys.argv[1], 'r+', libver='latest'); "
                "f.swmr_mode = True; f.flush(); os._exit(0)", marked], check=True)
try:
    h5py.File(marked, "r").close()
    check(False, "control: plain h5py opened a file still marked open for writing")
except OSError as e:
    check("already open for write" in str(e), f"control: plain h5py refuses it ({e})")
check(np.array_equal(rt.open_trace(marked).top1(), tr.top1()), "the package reads the marked trace")
check(trace_json(marked, "marked.json")["flips"] == doc["flips"], "routemoe trace reads it too")

# ---- DataFrames ----
try:
    import pandas  # noqa: F401
    frames = (rt.records_frame(tr), rt.flips_frame(tr), *rt.metrics_frame(run))
    check(len(frames[0]) == tr.n_records and len(frames[1]) == len(doc["flips"]), "frames")
    check(len(frames[2]) == len(run.train), "metrics frame")
    print("pandas: records, flips and metrics frames")
except ImportError:
    try:
        rt.records_frame(tr)
        check(False, "records_frame without pandas must raise")
    except ImportError as e:
        check("pandas" in str(e), f"the ImportError names pandas: {e}")
    print("pandas not installed: the frames raise ImportError naming it")

if failures:
    print(f"python_trace: {len(failures)} failures")
    sys.exit(1)
print(f"ok (python_trace): {tr.n_records} records x {tr.n_moe_layers} layers, "
      f"{len(doc['flips'])} flip rates equal to routemoe trace --json, {matched} checkpoints "
      f"match the trace (AC per token = per expert expanded), version-1 trace read the same")
