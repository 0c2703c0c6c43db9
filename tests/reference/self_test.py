#!/usr/bin/python3
"""Self-test of the reference and of check_parity.py (no C++ needed).

    /usr/bin/python3 self_test.py [-v]

1. unit checks of the reference: top-k tie-break, capacity priority, AC statistics against a
   plain-loop implementation, lr schedule, weight-decay groups, finite-difference gradients;
2. for every case (all four routers, capacity > 0, moe_every = 2, mixed router lists, k = 1 and
   k = 3, non-causal similarity): a synthetic float32 dump passes check_parity, also with extra
   gradient noise (16 u per element: a less accurate float32 implementation), and FAILS when any
   single gradient element is moved by 1e-3 of its tensor's scale, when any gradient tensor is
   scaled by 1 + 1e-3, when logits / loss / gates / a training loss / any final parameter tensor is
   perturbed by 1e-3 relative, and when one token's experts are changed (a real routing mismatch);
3. a tie broken the other way (duplicate gate rows) is reported as a near-tie and passes;
4. trajectories produced by an AdamW written from the equations of docs/model.md pass, and the
   same with one optimiser bug each (lr warmup off by one, decay on LayerNorm/bias, no decay,
   L2 instead of decoupled decay, no bias correction, no clipping) fail;
5. the command lines: exit status 0 / 1 and the --json output.
Exit status 0 if everything behaves, 1 otherwise.
"""

import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_parity as C  # noqa: E402
import make_synthetic_dump as M  # noqa: E402
import reference_model as R  # noqa: E402
from dump_io import read_dump, write_dump  # noqa: E402

U32 = 2.0 ** -24
VERBOSE = "-v" in sys.argv
FAILURES = []


def expect(cond, what):
    if VERBOSE or not cond:
        print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        FAILURES.append(what)


def passes(dump, ref=None):
    ref = C.compute_reference(dump) if ref is None else ref
    rows = C.compare(dump, ref)
    return all(r["ok"] for r in rows), rows


BASE = dict(vocab_size=64, seq_len=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, n_experts=4,
            top_k=2, moe_every=1, capacity_factor=0.0, similarity_tau=1.0, similarity_causal=True,
            aux_loss_coef=0.01, z_loss_coef=1e-3, ln_eps=1e-5, lr=3e-3, lr_min=3e-4, warmup=1,
            steps=6, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)

CASES = [
    ("topk", dict(routers=["topk"])),
    ("topk k=1 C=1.0", dict(routers=["topk"], top_k=1, capacity_factor=1.0)),
    ("similarity C=1.25", dict(routers=["similarity"], capacity_factor=1.25)),
    ("similarity non-causal tau=0.5", dict(routers=["similarity"], similarity_causal=False, similarity_tau=0.5)),
    ("attention C=0.8", dict(routers=["attention"], capacity_factor=0.8)),
    ("[topk, ac] moe_every=2 C=1.0", dict(routers=["topk", "ac"], n_layers=4, moe_every=2, capacity_factor=1.0)),
    ("ac (x3) E=6 k=3", dict(routers=["ac"], n_layers=3, n_experts=6, top_k=3, z_loss_coef=1e-2)),
    ("[similarity, attention, ac]", dict(routers=["similarity", "attention", "ac"], n_layers=3)),
]


# ----------------------------------------------------------------------------------------------
# 1. unit checks of the reference
# ----------------------------------------------------------------------------------------------
def ac_weights_loop(u, c, E):
    """AC feature weights written as plain loops (numpy float64), docs/model.md."""
    u = np.asarray(u, dtype=np.float64)
    N, d = u.shape
    present = [e for e in range(E) if (c == e).any()]
    w = {}
    for e in present:
        rows = u[c == e]
        mu = rows.mean(0)
        mad = np.abs(rows - mu).mean(0)
        w[e] = 1.0 / (mad + 1e-4)
    m = np.mean([w[e] for e in present])
    for e in present:
        w[e] = np.minimum(w[e], 10 * m)
    col = np.mean([w[e] for e in present], axis=0)
    for e in present:
        w[e] = w[e] / col
    return np.stack([w[int(ci)] for ci in c])


def capacity_loop(chosen, E, C_):
    N, k = chosen.shape
    cap = math.ceil(C_ * N * k / E)
    cnt = [0] * E
    keep = np.zeros((N, k), dtype=bool)
    for j in range(k):
        for i in range(N):
            e = int(chosen[i, j])
            if cnt[e] < cap:
                cnt[e] += 1
                keep[i, j] = True
    return keep


def unit_checks():
    print("unit checks of the reference")
    sel = torch.tensor([[0.3, 0.1, 0.3, 0.3], [0.1, 0.2, 0.2, 0.5]])
    expect(R.topk_desc(sel, 3).tolist() == [[0, 2, 3], [3, 1, 2]], "top-k: ties go to the lower index, listed first")

    g = torch.Generator().manual_seed(0)
    for C_ in (0.5, 1.0, 1.25):
        ch = torch.stack([torch.randperm(5, generator=g)[:2] for _ in range(23)])
        expect((R.capacity_keep(ch, 5, C_).numpy() == capacity_loop(ch.numpy(), 5, C_)).all(),
               f"capacity C={C_}: k-major priority, ceil(C N k / E) slots")
    expect(bool(R.capacity_keep(ch, 5, 0.0).all()), "capacity C<=0 is dropless")

    u = torch.randn(40, 8, generator=g, dtype=torch.float64)
    u[3] *= 50.0                                                # an outlier (exercises the clip)
    c = torch.randint(0, 4, (40,), generator=g)                # expert 4 absent
    c[c == 2] = 1
    c[0] = 2                                                    # expert 2 has one token (MAD 0 -> clipped)
    Mw = R.ac_feature_weights(u, c, 5)
    expect(np.allclose(Mw.numpy(), ac_weights_loop(u.numpy(), c.numpy(), 5), rtol=1e-12, atol=0),
           "AC weights equal a plain-loop implementation (absent expert, single-token expert, clip)")

    cfg = R.Config(dict(BASE, lr=1.0, lr_min=0.1, warmup=4, steps=14))
    lrs = [R.lr_at(s, cfg) for s in (0, 3, 4, 9, 14, 20)]
    expect(np.allclose(lrs, [0.25, 1.0, 1.0, 0.55, 0.1, 0.1]), f"lr schedule {lrs}")
    cfg0 = R.Config(dict(BASE, lr=1.0, lr_min=0.0, warmup=0, steps=1))
    expect(np.allclose([R.lr_at(0, cfg0), R.lr_at(1, cfg0)], [1.0, 0.0]), "lr schedule warmup=0, steps=1")

    cfg = R.Config(dict(BASE, routers=["topk", "ac"], n_layers=4, moe_every=2))
    P = R.init_params(cfg, 0)
    nd = sorted(n for n in P if R.no_weight_decay(n))
    expect(all(n.endswith("bias") or ".ln" in n or n.startswith("ln_f") for n in nd)
           and "blocks.3.moe.expert_emb" not in nd and "wte" not in nd and "blocks.0.ln1.weight" in nd
           and "ln_f.weight" in nd and "blocks.1.moe.gate.weight" not in nd,
           "weight-decay groups: no decay exactly on *.bias and LayerNorm params")
    names = list(P)
    expect("blocks.1.moe.gate.weight" in names and "blocks.3.moe.expert_emb" in names
           and "blocks.3.moe.gate.weight" not in names and "blocks.0.mlp.fc.weight" in names,
           "param names: first ac layer has a gate, later ac layers expert_emb, dense blocks mlp")
    emb = P["blocks.3.moe.expert_emb"].detach().double()
    expect(torch.allclose(emb @ emb.T, 0.32 ** 2 * torch.eye(4, dtype=torch.float64), atol=1e-6),
           "expert_emb init: orthogonal rows x 0.32")

    # finite differences (float64) with the routing held fixed; for `ac` M is a constant by
    # definition, so only parameters that do not feed its statistics are differentiated there
    for routers in (["topk"], ["similarity"], ["attention"], ["topk", "ac"]):
        cfg = R.Config(dict(BASE, routers=routers, vocab_size=32, seq_len=8, d_model=16, n_heads=2,
                            d_ff=24, aux_loss_coef=0.1, z_loss_coef=0.01, capacity_factor=1.0))
        P = R.init_params(cfg, 1, torch.float64, bias_std=0.1)
        inp = torch.randint(0, 32, (2, 8), generator=g)
        tg = torch.randint(-1, 32, (2, 8), generator=g)
        out, grads = R.forward_backward(P, cfg, inp, tg)
        forced = [r["experts"] for r in out["routing"]]
        if routers == ["topk", "ac"]:
            # downstream of the ac layer's input u only (M depends on u)
            names = ["blocks.1.moe.expert_emb", "blocks.1.moe.experts.fc.weight", "blocks.1.moe.experts.proj.bias",
                     "ln_f.weight"]
        else:
            names = ["wte", "wpe", "blocks.0.attn.qkv.weight", "blocks.1.ln2.weight",
                     "blocks.1.moe.gate.weight", "blocks.0.moe.experts.fc.bias"]
        worst = 0.0
        for n in names:
            flat = P[n].detach().view(-1)
            for idx in range(0, flat.numel(), max(1, flat.numel() // 4)):
                old = flat[idx].item()
                vals = []
                for h in (1e-6, -1e-6):
                    flat[idx] = old + h
                    vals.append(R.forward(P, cfg, inp, tg, forced)["loss"].item())
                flat[idx] = old
                fd = (vals[0] - vals[1]) / 2e-6
                worst = max(worst, abs(fd - grads[n].view(-1)[idx].item()))
        expect(worst < 1e-8, f"finite differences {routers}: max |fd - autograd| = {worst:.1e}")


# ----------------------------------------------------------------------------------------------
# 2. per-case parity self-test
# ----------------------------------------------------------------------------------------------
def perturbed(dump, fn):
    d = copy.deepcopy(dump)
    fn(d)
    return d


def bump_max(a, rel):
    """Move the largest-magnitude element of a by rel * max|a|."""
    a = np.array(a, copy=True)
    j = np.unravel_index(np.argmax(np.abs(a)), a.shape)
    a[j] += rel * max(np.abs(a).max(), 1e-30)
    return a


def case_checks(name, extra, tmpdir):
    print(f"case: {name}")
    cfg_d = dict(BASE, **extra)
    path = os.path.join(tmpdir, "case.h5")
    write_dump(path, M.make_dump(cfg_d, batch=2, train_steps=4, seed=7))
    dump = read_dump(path)                            # through the file format
    ref = C.compute_reference(dump)
    ok, rows = passes(dump, ref)
    expect(ok, f"{name}: synthetic float32 dump passes")
    if not ok:
        C.print_table(rows, ref, name, quiet=True)
        return
    if cfg_d["capacity_factor"] > 0:
        dropped = sum(int((~r["keep"]).sum()) for r in ref["single"]["out"]["routing"])
        expect(dropped > 0, f"{name}: capacity drops slots ({dropped})")

    noisy = M.make_dump(cfg_d, batch=2, train_steps=4, seed=7, grad_jitter=16 * U32)
    # same params, batches and routing as `dump`: the reference results are reused
    expect(all(np.array_equal(a["experts"], b["experts"]) for a, b in zip(noisy["routing"], dump["routing"]))
           and passes(noisy, ref)[0], f"{name}: dump with 16u per-element gradient noise passes")

    def fails(fn):
        return not passes(perturbed(dump, fn), ref)[0]      # outputs only: reference reused

    bad = [n for n in dump["grads"] if dump["grads"][n].any()
           and not fails(lambda d, n=n: d["grads"].__setitem__(n, bump_max(d["grads"][n], 1e-3)))]
    expect(not bad, f"{name}: every gradient element moved by 1e-3 x max|g| fails {bad[:3]}")
    bad = [n for n in dump["grads"] if dump["grads"][n].any()
           and not fails(lambda d, n=n: d["grads"].__setitem__(n, d["grads"][n] * (1 + 1e-3)))]
    expect(not bad, f"{name}: every gradient tensor scaled by 1+1e-3 fails {bad[:3]}")
    expect(fails(lambda d: d.__setitem__("logits", bump_max(d["logits"], 1e-3))), f"{name}: logits perturbed fails")
    for k in ("loss", "ce_loss", "aux_loss"):
        expect(fails(lambda d, k=k: d.__setitem__(k, d[k] * (1 + 1e-3))), f"{name}: {k} x (1+1e-3) fails")
    expect(fails(lambda d: d["routing"][0].__setitem__("gates", bump_max(d["routing"][0]["gates"], 1e-3))),
           f"{name}: gates perturbed fails")
    S = len(dump["train"]["losses"])
    for s in range(S):
        expect(fails(lambda d, s=s: d["train"]["losses"].__setitem__(s, d["train"]["losses"][s] * (1 + 1e-3))),
               f"{name}: train loss[{s}] x (1+1e-3) fails")
    bad = [n for n in dump["train"]["final"]
           if not fails(lambda d, n=n: d["train"]["final"].__setitem__(n, d["train"]["final"][n] * (1 + 1e-3)))]
    expect(not bad, f"{name}: every final param tensor scaled by 1+1e-3 fails {bad[:3]}")

    # a real routing mismatch: the token with the largest margin gets its last-ranked expert first
    info = ref["single"]["out"]["routing"][-1]
    i = int(info["margin"].argmax())
    worst_e = int(torch.argmin(info["sel"][i]))
    d = copy.deepcopy(dump)
    ex = d["routing"][-1]["experts"]
    row_ = [worst_e] + [e for e in ex[i].tolist() if e != worst_e][: ex.shape[1] - 1]
    ex[i] = row_
    ok, rows = passes(d)
    rrow = [r for r in rows if r["section"] == "routing" and r["name"].endswith("experts")][-1]
    expect(not ok and not rrow["ok"] and "real=1" in rrow["note"], f"{name}: a real routing mismatch fails ({rrow['note']})")


# ----------------------------------------------------------------------------------------------
# 3. near-tie
# ----------------------------------------------------------------------------------------------
def near_tie_check():
    print("near-tie handling")
    cfg_d = dict(BASE, routers=["topk"], capacity_factor=1.0)
    cfg = R.Config(cfg_d)
    P = R.init_params(cfg, 3, torch.float32, bias_std=0.05)
    with torch.no_grad():                              # experts 0 and 1 have the same gate row: p0 == p1
        for l in cfg.moe_blocks():
            w = P[f"blocks.{l}.moe.gate.weight"]
            w[1] = w[0]
            w[0] *= 3.0                                # make 0/1 popular so that ties are chosen
            w[1] = w[0]
    g = torch.Generator().manual_seed(5)
    inp = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    tg = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    own = R.forward(R.clone_params(P, torch.float32), cfg, inp, tg)
    # a "C++" that breaks ties toward the higher index: swap the labels 0 <-> 1
    swap = [torch.where(r["experts"] == 0, 1, torch.where(r["experts"] == 1, 0, r["experts"])) for r in own["routing"]]
    out, grads = R.forward_backward(P, cfg, inp, tg, swap)
    dump = {"config": cfg.to_dict(), "params": {n: t.detach().numpy().copy() for n, t in P.items()},
            "inputs": inp.numpy(), "targets": tg.numpy(), "logits": out["logits"].detach().numpy(),
            "loss": out["loss"].item(), "ce_loss": out["ce_loss"].item(), "aux_loss": out["aux_loss"].item(),
            "grads": {n: x.numpy() for n, x in grads.items()},
            "routing": [{"experts": s.numpy(), "gates": r["gates"].numpy()} for s, r in zip(swap, out["routing"])],
            "train": None}
    n_changed = sum(int((s != r["experts"]).any(dim=1).sum()) for s, r in zip(swap, own["routing"]))
    ok, rows = passes(dump)
    notes = [r["note"] for r in rows if r["section"] == "routing" and r["name"].endswith("experts")]
    expect(n_changed > 0 and ok and all("real=0" in n for n in notes) and any("near-ties=0" not in n for n in notes),
           f"ties decided the other way: {n_changed} tokens, reported as near-ties and passing ({notes})")

    # classify_routing on its own
    sel = torch.tensor([[0.5, 0.5 - 1e-7, 0.0], [0.6, 0.3, 0.1]], dtype=torch.float64)
    n_mis, n_near, real = C.classify_routing(np.array([[1, 0], [1, 0]]), np.array([[0, 1], [0, 1]]), sel)
    expect(n_mis == 2 and n_near == 1 and len(real) == 1 and real[0]["token"] == 1,
           "classify_routing: a 1e-7 gap is a near-tie, a 0.3 gap is real")


# ----------------------------------------------------------------------------------------------
# 4. optimiser written from the equations, with and without bugs
# ----------------------------------------------------------------------------------------------
def manual_trajectory(dump, cfg, bug=None):
    """float32 AdamW + schedule + clipping from docs/model.md, written out (not torch.optim)."""
    P = OrderedDict((n, torch.tensor(a, dtype=torch.float32, requires_grad=True)) for n, a in dump["params"].items())
    m = {n: torch.zeros_like(t) for n, t in P.items()}
    v = {n: torch.zeros_like(t) for n, t in P.items()}
    tr = dump["train"]
    losses = []
    for s in range(tr["inputs"].shape[0]):
        for t in P.values():
            t.grad = None
        out = R.forward(P, cfg, tr["inputs"][s], tr["targets"][s])
        out["loss"].backward()
        losses.append(out["loss"].item())
        grads = {n: (t.grad if t.grad is not None else torch.zeros_like(t)).detach().clone() for n, t in P.items()}
        G = math.sqrt(sum(float((gr.double() ** 2).sum()) for gr in grads.values()))
        if cfg.grad_clip > 0 and bug != "no clipping":
            scale = min(1.0, cfg.grad_clip / (G + 1e-6))
            grads = {n: gr * scale for n, gr in grads.items()}
        if bug == "warmup off by one":
            lr = cfg.lr * s / cfg.warmup if s < cfg.warmup else R.lr_at(s, cfg)
        else:
            lr = R.lr_at(s, cfg)
        t_ = s + 1
        with torch.no_grad():
            for n, p in P.items():
                lam = 0.0 if R.no_weight_decay(n) else cfg.weight_decay
                if bug == "decay on LN/bias":
                    lam = cfg.weight_decay
                if bug == "no decay":
                    lam = 0.0
                gr = grads[n]
                if bug == "L2 instead of decoupled":
                    gr = gr + lam * p
                m[n] = cfg.beta1 * m[n] + (1 - cfg.beta1) * gr
                v[n] = cfg.beta2 * v[n] + (1 - cfg.beta2) * gr * gr
                bc1, bc2 = (1.0, 1.0) if bug == "no bias correction" else (1 - cfg.beta1 ** t_, 1 - cfg.beta2 ** t_)
                upd = (m[n] / bc1) / (torch.sqrt(v[n] / bc2) + cfg.eps)
                if bug != "L2 instead of decoupled":
                    upd = upd + lam * p
                p -= lr * upd
    return np.array(losses), {n: t.detach().numpy().copy() for n, t in P.items()}


def optimiser_checks():
    print("optimiser: equations of docs/model.md, and bugs")
    # grad_clip small enough to be active, warmup 2 so that the off-by-one matters
    cfg_d = dict(BASE, routers=["topk", "ac"], n_layers=2, grad_clip=0.05, warmup=2, steps=5)
    dump = M.make_dump(cfg_d, batch=2, train_steps=4, seed=11)
    cfg = R.Config(cfg_d)
    ref = C.compute_reference(dump)
    losses, final = manual_trajectory(dump, cfg)
    d = copy.deepcopy(dump)
    d["train"]["losses"], d["train"]["final"] = losses, final
    ok, rows = passes(d, ref)
    expect(ok, "AdamW written from the equations matches torch.optim.AdamW within tolerance")
    if not ok:
        C.print_table(rows, ref, "manual adamw", quiet=True)
    for bug in ("warmup off by one", "decay on LN/bias", "no decay", "L2 instead of decoupled",
                "no bias correction", "no clipping"):
        losses, final = manual_trajectory(dump, cfg, bug)
        d = copy.deepcopy(dump)
        d["train"]["losses"], d["train"]["final"] = losses, final
        expect(not passes(d, ref)[0], f"optimiser bug '{bug}' is detected")


# ----------------------------------------------------------------------------------------------
# 5. command lines
# ----------------------------------------------------------------------------------------------
def cli_checks(tmpdir):
    print("command lines")
    good = os.path.join(tmpdir, "good.h5")
    r = subprocess.run([sys.executable, os.path.join(HERE, "make_synthetic_dump.py"), good, "--router", "topk,ac",
                        "--n-layers", "4", "--moe-every", "2", "--capacity-factor", "1.0", "--train-steps", "2"],
                       capture_output=True, text=True)
    expect(r.returncode == 0 and os.path.exists(good), "make_synthetic_dump.py writes a dump")
    js = os.path.join(tmpdir, "good.json")
    r = subprocess.run([sys.executable, os.path.join(HERE, "check_parity.py"), good, "--json", js],
                       capture_output=True, text=True)
    res = json.load(open(js)) if os.path.exists(js) else {}
    expect(r.returncode == 0 and res.get("passed") is True and "PASS" in r.stdout,
           "check_parity.py: exit 0, PASS and --json on a good dump")
    d = read_dump(good)
    d["grads"]["wte"] = bump_max(d["grads"]["wte"], 1e-3)
    bad = os.path.join(tmpdir, "bad.h5")
    write_dump(bad, d)
    r = subprocess.run([sys.executable, os.path.join(HERE, "check_parity.py"), bad, "--quiet"],
                       capture_output=True, text=True)
    expect(r.returncode == 1 and "grad:wte" in r.stdout and "FAIL" in r.stdout,
           "check_parity.py: exit 1 and the failing tensor named on a perturbed dump")
    r = subprocess.run([sys.executable, os.path.join(HERE, "check_parity.py"), os.path.join(tmpdir, "missing.h5")],
                       capture_output=True, text=True)
    expect(r.returncode == 1 and "cannot check" in r.stderr, "check_parity.py: exit 1 with a message on a missing file")


def main():
    torch.set_num_threads(1)          # tiny tensors: threads only add contention
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmpdir:
        unit_checks()
        for name, extra in CASES:
            case_checks(name, extra, tmpdir)
        near_tie_check()
        optimiser_checks()
        cli_checks(tmpdir)
    dt = time.time() - t0
    if FAILURES:
        print(f"self_test: {len(FAILURES)} FAILED ({dt:.1f}s)")
        return 1
    print(f"self_test: all passed ({dt:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
