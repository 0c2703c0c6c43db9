"""Reading and writing reference dumps (HDF5), the format of README.md ("Dump format").

A dump holds: the config (JSON root attribute), initial params, one batch, the outputs / gradients /
routing of one forward+backward on it, and optionally a multi-step training trajectory.
"""

import json
from collections import OrderedDict

import h5py
import numpy as np


def _scalar(ds):
    return float(np.asarray(ds[()]).reshape(()))


def read_dump(path):
    """Returns a plain dict of numpy arrays:
    config (dict), params, grads (OrderedDict name -> array), inputs, targets, logits, loss,
    ce_loss, aux_loss (float), routing (list of dict(experts, gates) or None per layer m),
    train (dict(inputs, targets, losses, final) or None)."""
    d = {}
    with h5py.File(path, "r") as f:
        raw = f.attrs["config"]
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        if isinstance(raw, np.ndarray):          # array of one string
            raw = raw.reshape(-1)[0]
            raw = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        d["config"] = json.loads(raw)
        d["params"] = OrderedDict((n, np.asarray(f["params"][n][()])) for n in f["params"].keys())
        d["inputs"] = np.asarray(f["batch/inputs"][()]).astype(np.int64)
        d["targets"] = np.asarray(f["batch/targets"][()]).astype(np.int64)
        d["logits"] = np.asarray(f["out/logits"][()])
        for k in ("loss", "ce_loss", "aux_loss"):
            d[k] = _scalar(f["out/" + k])
        d["grads"] = OrderedDict((n, np.asarray(f["grads"][n][()])) for n in f["grads"].keys()) if "grads" in f else OrderedDict()
        routing = []
        if "routing" in f:
            m = 0
            while f"layer{m}" in f["routing"]:
                g = f["routing"][f"layer{m}"]
                routing.append({
                    "experts": np.asarray(g["experts"][()]).astype(np.int64),
                    "gates": np.asarray(g["gates"][()]) if "gates" in g else None,
                })
                m += 1
        d["routing"] = routing
        d["train"] = None
        if "train" in f and "losses" in f["train"] and f["train/losses"].shape[0] > 0:
            t = f["train"]
            d["train"] = {
                "inputs": np.asarray(t["inputs"][()]).astype(np.int64),
                "targets": np.asarray(t["targets"][()]).astype(np.int64),
                "losses": np.asarray(t["losses"][()]).astype(np.float64),
                "final": OrderedDict((n, np.asarray(t["final"][n][()])) for n in t["final"].keys()),
            }
    return d


def write_dump(path, d):
    """Inverse of read_dump (float arrays written as float32, ints as int32)."""
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    i32 = lambda a: np.asarray(a, dtype=np.int32)
    with h5py.File(path, "w") as f:
        f.attrs["config"] = json.dumps(d["config"])
        for n, a in d["params"].items():
            f.create_dataset("params/" + n, data=f32(a))
        f.create_dataset("batch/inputs", data=i32(d["inputs"]))
        f.create_dataset("batch/targets", data=i32(d["targets"]))
        f.create_dataset("out/logits", data=f32(d["logits"]))
        for k in ("loss", "ce_loss", "aux_loss"):
            f.create_dataset("out/" + k, data=np.float32(d[k]))
        for n, a in d["grads"].items():
            f.create_dataset("grads/" + n, data=f32(a))
        for m, r in enumerate(d["routing"]):
            f.create_dataset(f"routing/layer{m}/experts", data=i32(r["experts"]))
            if r.get("gates") is not None:
                f.create_dataset(f"routing/layer{m}/gates", data=f32(r["gates"]))
        t = d.get("train")
        if t is not None:
            f.create_dataset("train/inputs", data=i32(t["inputs"]))
            f.create_dataset("train/targets", data=i32(t["targets"]))
            f.create_dataset("train/losses", data=f32(t["losses"]))
            for n, a in t["final"].items():
                f.create_dataset("train/final/" + n, data=f32(a))
