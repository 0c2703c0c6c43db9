"""The files of a routemoe run (docs/checkpoint-format.md): trace.h5 (format versions 1 and 2),
checkpoints/ckpt_<step>.h5, metrics.jsonl and config.toml."""

import json
import os
import re

import h5py
import numpy as np

TRACE_FORMAT = "routemoe-trace"
CHECKPOINT_FORMAT = "routemoe-checkpoint"
TRACE_VERSIONS = (1, 2)       # what this package reads
CHECKPOINT_VERSIONS = (1,)


def _text(value):
    """String attributes are fixed-length UTF-8: h5py returns bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8").rstrip("\0")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return np.char.decode(np.char.rstrip(value, b"\0"), "utf-8")
    return str(value)


def _open(path):
    """Opens an HDF5 file read-only; a trace whose appender was killed still carries HDF5's
    "open for writing" mark, which SWMR-read mode accepts (it reads what was flushed)."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if "already open for write" not in str(e):
            raise
        return h5py.File(path, "r", libver="latest", swmr=True)


def _check(f, path, fmt, versions):
    got = _text(f.attrs.get("format", b""))
    if got != fmt:
        raise ValueError(f"{path}: not a {fmt} file (format is '{got}')")
    version = int(f.attrs.get("format_version", 0))
    if version not in versions:
        raise ValueError(f"{path}: {fmt} format_version {version} is not supported "
                         f"(this package reads {', '.join(map(str, versions))})")
    return version


class Record:
    """One routing record of the probe set (a checkpoint's /routing, or one trace record).

    layers: one dict per MoE layer with "router", "experts" [P, k] int32, "gates" and "probs"
    [P, k] float32, and for layers routed by ac "ac_scale" [P, d] (per-token AC weights M_i,
    what checkpoints and version-1 traces store) or "ac_weights" [G, E, d] with "ac_present"
    [G, E] (per-expert weights w_e of each token group, what version-2 traces store)."""

    def __init__(self, step, epoch, reason, layers, groups=1):
        self.step, self.epoch, self.reason = int(step), int(epoch), reason
        self.layers, self.groups = layers, int(groups)

    def ac_token_weights(self, layer):
        """M [P, d] of an ac layer: stored per token, or expanded from the per-expert weights
        (token i of group g = i // (P / G) gets w[g, c_i], c_i its top-1 expert at the
        previous MoE layer). None for a layer without AC weights."""
        L = self.layers[layer]
        if "ac_scale" in L:
            return L["ac_scale"]
        if "ac_weights" not in L:
            return None
        w, present = L["ac_weights"], L["ac_present"]
        prev = self.layers[layer - 1]["experts"][:, 0]
        P = prev.shape[0]
        group = np.arange(P) // (P // w.shape[0])
        if not present[group, prev].all():
            raise ValueError(f"layer {layer}: a token's group has no AC weights for its expert")
        return w[group, prev]

    def __repr__(self):
        return (f"Record(step={self.step}, epoch={self.epoch}, reason={self.reason!r}, "
                f"layers={len(self.layers)})")


def _read_group_record(g):
    """A version-1 record group (also a checkpoint's /routing)."""
    layers, m = [], 0
    while f"layer{m}" in g:
        lg = g[f"layer{m}"]
        layer = {"router": _text(lg.attrs.get("router", b"")), "experts": lg["experts"][()],
                 "gates": lg["gates"][()], "probs": lg["probs"][()]}
        if "ac_scale" in lg:
            layer["ac_scale"] = lg["ac_scale"][()]
        layers.append(layer)
        m += 1
    return Record(g.attrs["step"], g.attrs["epoch"], _text(g.attrs.get("reason", b"")), layers)


class Trace:
    """A routing trace, read completely on opening (records are small: [P, k] per layer).

    Attributes: path, version, n_moe_layers, top_k, n_experts, seq_len, d_model (0 for a
    version-1 trace), routers (configured, per MoE layer), layer_routers (what each layer
    actually used: ac on the first MoE layer reports topk), config (TOML text), probe_tokens
    [P], and per record: steps, epochs, reasons, groups ([R] arrays)."""

    def __init__(self, path):
        self.path = path
        with _open(path) as f:
            self.version = _check(f, path, TRACE_FORMAT, TRACE_VERSIONS)
            a = f.attrs
            self.n_moe_layers, self.top_k = int(a["n_moe_layers"]), int(a["top_k"])
            self.n_experts, self.seq_len = int(a["n_experts"]), int(a["seq_len"])
            self.d_model = int(a.get("d_model", 0))
            self.routers = [r.strip() for r in _text(a["routers"]).split(",") if r.strip()]
            self.config = _text(a["config"])
            self.probe_tokens = f["probe/tokens"][()]
            if self.version == 1:
                self._read_v1(f)
            else:
                self._read_v2(f)
        self.layer_routers = [self._layers[m]["router"] for m in range(len(self._layers))]

    def _read_v1(self, f):
        names = sorted(f["records"]) if "records" in f else []
        recs = [_read_group_record(f["records"][n]) for n in names]
        self.steps = np.array([r.step for r in recs], dtype=np.int64)
        self.epochs = np.array([r.epoch for r in recs], dtype=np.int64)
        self.reasons = [r.reason for r in recs]
        self.groups = np.ones(len(recs), dtype=np.int64)  # not recorded by version 1
        self._layers = []
        for m in range(self.n_moe_layers):
            layer = {"router": recs[-1].layers[m]["router"] if recs else ""}
            for key in ("experts", "gates", "probs"):
                layer[key] = np.stack([r.layers[m][key] for r in recs]) if recs else None
            if recs and "ac_scale" in recs[0].layers[m]:
                layer["ac_scale"] = np.stack([r.layers[m]["ac_scale"] for r in recs])
            self._layers.append(layer)

    def _read_v2(self, f):
        # records/step is written last by every append: its length is the number of complete
        # records; longer columns hold what an interrupted append left.
        R = f["records/step"].shape[0]
        self.steps = f["records/step"][:R]
        self.epochs = f["records/epoch"][:R]
        self.reasons = [str(x) for x in _text(f["records/reason"][:R])]
        self.groups = f["records/groups"][:R]
        ac_row = f["records/ac_row"][:R]
        self._layers = []
        for m in range(self.n_moe_layers):
            g = f[f"records/layer{m}"]
            layer = {"router": _text(g.attrs.get("router", b""))}
            for key in ("experts", "gates", "probs"):
                layer[key] = g[key][:R]
            if "ac_weights" in g:
                rows = int(ac_row[-1] + self.groups[-1]) if R else 0
                w, present = g["ac_weights"][:rows], g["ac_present"][:rows].astype(bool)
                layer["ac_weights"] = [w[b:b + n] for b, n in zip(ac_row, self.groups)]
                layer["ac_present"] = [present[b:b + n] for b, n in zip(ac_row, self.groups)]
            self._layers.append(layer)

    # ---- per layer ----

    @property
    def n_records(self):
        return len(self.steps)

    def experts(self, layer):
        """[R, P, k] int32: the chosen experts of every record, best first."""
        return self._layers[layer]["experts"]

    def gates(self, layer):
        """[R, P, k] float32: gate weights of the chosen experts."""
        return self._layers[layer]["gates"]

    def probs(self, layer):
        """[R, P, k] float32: routing probability of each chosen expert."""
        return self._layers[layer]["probs"]

    def has_ac_weights(self, layer):
        return "ac_weights" in self._layers[layer] or "ac_scale" in self._layers[layer]

    def ac_weights(self, layer, record):
        """(w [G, E, d], present [G, E] bool): per-expert AC weights of each token group of a
        record of an ac layer (a version-1 trace stores per-token weights: see
        ac_token_weights); None for other layers."""
        L = self._layers[layer]
        if "ac_weights" not in L:
            return None
        return L["ac_weights"][record], L["ac_present"][record]

    def ac_token_weights(self, layer, record):
        """M [P, d] of an ac layer at a record (expanded from the per-expert weights of a
        version-2 trace); None for other layers."""
        return self.record(record).ac_token_weights(layer)

    def top1(self):
        """[R, L, P]: the first-choice expert of every record, MoE layer and probe token."""
        return np.stack([self.experts(m)[:, :, 0] for m in range(self.n_moe_layers)], axis=1)

    def record(self, index):
        """Record `index` as a Record (the layout a checkpoint's /routing has)."""
        layers = []
        for L in self._layers:
            layer = {"router": L["router"]}
            for key in ("experts", "gates", "probs"):
                layer[key] = L[key][index]
            if "ac_scale" in L:
                layer["ac_scale"] = L["ac_scale"][index]
            if "ac_weights" in L:
                layer["ac_weights"] = L["ac_weights"][index]
                layer["ac_present"] = L["ac_present"][index]
            layers.append(layer)
        return Record(self.steps[index], self.epochs[index], self.reasons[index], layers,
                      self.groups[index])

    def __repr__(self):
        return (f"Trace({self.path!r}, version {self.version}, {self.n_records} records, "
                f"{self.n_moe_layers} MoE layers {','.join(self.layer_routers)}, "
                f"P {len(self.probe_tokens)}, k {self.top_k}, E {self.n_experts})")


class Checkpoint:
    """A checkpoint: step, epoch, world_size, ep_size, data_seed, routers, config, the routing
    record (`routing`, a Record or None) and its tensors (`param(name)`, `moment(m_or_v, name)`,
    global shapes whatever layout wrote them)."""

    def __init__(self, path):
        self.path = path
        with _open(path) as f:
            self.version = _check(f, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSIONS)
            a = f.attrs
            self.step, self.epoch = int(a["step"]), int(a["epoch"])
            self.world_size, self.ep_size = int(a["world_size"]), int(a["ep_size"])
            self.data_seed = int(a["data_seed"])
            self.routers = [r.strip() for r in _text(a["routers"]).split(",") if r.strip()]
            self.config = _text(a["config"])
            self.param_names = sorted(f["params"]) if "params" in f else []
            self.routing = _read_group_record(f["routing"]) if "routing" in f else None

    def param(self, name):
        with _open(self.path) as f:
            return f["params"][name][()]

    def moment(self, which, name):
        """AdamW's first ("m") or second ("v") moment of a parameter."""
        with _open(self.path) as f:
            return f["optim"][which][name][()]

    def __repr__(self):
        return f"Checkpoint({self.path!r}, step {self.step}, routers {','.join(self.routers)})"


def read_metrics(path):
    """The lines of a metrics.jsonl: (train, val), lists of dicts in file order (training lines
    carry "loss", validation lines "val_loss"). A line cut short by a killed run is skipped."""
    train, val = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            (val if "val_loss" in row else train).append(row)
    return train, val


class Run:
    """A run directory: `trace` (Trace or None), `checkpoints` (paths, oldest first),
    `train` and `val` (metrics.jsonl lines, lists of dicts), `config` (config.toml text)."""

    def __init__(self, path):
        self.path = path
        trace = os.path.join(path, "trace.h5")
        self.trace = open_trace(trace) if os.path.exists(trace) else None
        ck = os.path.join(path, "checkpoints")
        found = []
        if os.path.isdir(ck):
            for name in os.listdir(ck):
                m = re.fullmatch(r"ckpt_([0-9]+)\.h5", name)
                if m:
                    found.append((int(m.group(1)), os.path.join(ck, name)))
        self.checkpoints = [p for _, p in sorted(found)]
        metrics = os.path.join(path, "metrics.jsonl")
        self.train, self.val = read_metrics(metrics) if os.path.exists(metrics) else ([], [])
        cfg = os.path.join(path, "config.toml")
        self.config = open(cfg, encoding="utf-8").read() if os.path.exists(cfg) else ""

    def checkpoint(self, index=-1):
        """The checkpoint at `index` of `checkpoints` (default: the newest) as a Checkpoint."""
        return open_checkpoint(self.checkpoints[index])

    def __repr__(self):
        return (f"Run({self.path!r}: {'a trace' if self.trace else 'no trace'}, "
                f"{len(self.checkpoints)} checkpoints, {len(self.train)} training lines)")


def open_trace(path):
    return Trace(path)


def open_checkpoint(path):
    return Checkpoint(path)


def load_run(path):
    return Run(path)
