#!/usr/bin/python3
"""Check a C++ reference dump against the independent PyTorch reference.

    /usr/bin/python3 check_parity.py DUMP.h5 [--json OUT.json] [--quiet]

(a) logits, loss, ce_loss, aux_loss, routing gates and every parameter gradient of one
    forward/backward, reference in float64 vs the C++ float32 values;
(b) the chosen experts of every MoE layer (mismatches classified as near-ties or real);
(c) the training trajectory in /train: the loss of every step and the final parameters, reference
    AdamW + lr schedule + clipping in float64.
Prints a table; exit status 0 only if everything passes, 1 otherwise (also for unreadable input).

Tolerances (see README.md for the full derivation)
-------------------------------------------------
u = 2^-24 is the float32 unit roundoff.  A float32 dot product / sum of length K has a rounding
error that behaves like a random walk, ~ sqrt(K) u times the sum of |terms|; errors of successive
stages add up in the same way, so after D sequential reduction stages of length <= K the relative
error of a tensor (relative to its own scale, max|ref|) is ~ sqrt(D K) u.  We take
    D = 2 (8 L + 3)   forward + backward, per block: LN1, qkv, q k^T, softmax, P v, proj, LN2, FFN
                      (counted as 8 reductions), plus final LN, LM head and softmax/CE
    K = max(d_model, d_ff, T, N = B T, V, E)   (weight gradients reduce over the N tokens)
    rtol = C_SAFE sqrt(D K) u,  C_SAFE = 4 (covers the max over many elements ~ 4-5 sigma relative
           to a per-element rms, and O(1) amplification by LayerNorm / softmax)
and compare each tensor with one per-tensor criterion
    max|cpp - ref| <= atol + rtol * max|ref|
atol: 0 for logits and losses; for gradients atol = 1e-3 * rtol * (largest gradient of the model),
so that a tensor whose gradient is (nearly) zero is not judged at the 1e-30 level.
The tolerance is widened to 4x the float32 error of the reference itself (the same equations in
float32 against float64) where that error is larger: this only happens for ill-conditioned
tensors, and it is printed.  For the small test models rtol ~ 1e-5, about 20-40x the errors an
fp32 implementation actually makes (5-15 u) and 100x below a 1e-3 relative perturbation.

Trajectory: AdamW divides by sqrt(v^), so a gradient element that is within rounding noise of
zero gets an update whose size/sign float32 does not determine (up to ~lr per step), and parameter
differences feed back through later steps (routing, second order).  Two tools:
 * first-order AdamW budget, per element, along the exact float64 trajectory: with delta_s the
   per-tensor fp32 gradient bound above (running max over steps), the moments are weighted means
   of g and g^2, so |d m^| <= delta and |d sqrt(v^)| <= delta, hence
       |d(m^/(sqrt(v^)+eps))| <= delta (1 + r) / (sqrt(v^) + eps),  r = |m^|/(sqrt(v^)+eps),
   and never more than 2 A_t, A_t = max |m^|/sqrt(v^) over all gradient sequences (Cauchy-Schwarz,
   adam_ratio_bound).  b_i = sum_s lr_s min(2 A_s, delta_s (1 + r_i)/(sqrt(v^_i)+eps)) + u|theta_i|.
 * an ensemble that propagates the fp32 error model through the real trajectory: N_ENSEMBLE = 3
   runs of the reference in float32 (float32 params and AdamW state), each from the dump's params
   moved by a random +-1 ulp per element (a fresh rounding realization) and with every gradient
   element multiplied by (1 + sqrt(D K) u xi), xi ~ N(0,1) (gradient error at the level of the
   bound above); "spread" = their largest deviation from the exact trajectory.
Criteria (C_ENS = 4, C_BUDGET = 2, C_ENS_MAX = 4):
    loss[s]   |L_cpp - L_ref| <= rtol max(|L|, max|logits|) + C_ENS max_{s'<=s} spread(L_s')
    final     per element  |cpp - ref| <= C_BUDGET b_i + C_ENS_MAX max-spread(tensor) + u max|ref|
              median over the tensor of |cpp - ref| <= C_ENS median-spread(tensor) + u max|ref|
The median is what catches systematic optimiser errors (it is not moved by the few elements whose
update is noise, which dominate max and rms); the per-element criterion catches localised errors.
The key slice [d, 2d) of attn.qkv.bias has an exact gradient of 0 (softmax is invariant to it):
its trajectory is rounding noise amplified by AdamW, so it is held only to the AdamW step bound
sum_s 2 lr_s A_s.
Self-test: float32 implementations with up to ~50 u per-element gradient noise pass (worst
err/tol ~ 0.25); optimiser bugs (warmup off by one, decay on LN/bias, no decay, L2 instead of
decoupled decay, no bias correction, no clipping) and a 1e-3 relative change of any final tensor fail.
"""

import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as R  # noqa: E402
from dump_io import read_dump  # noqa: E402

U32 = 2.0 ** -24      # float32 unit roundoff
C_SAFE = 4.0          # safety factor of the per-tensor fp32 bound
C_REF32 = 4.0         # widen to this multiple of the reference's own float32 error
GRAD_ATOL_FRAC = 1e-3 # gradient atol = GRAD_ATOL_FRAC * rtol * largest gradient
C_ENS = 4.0           # trajectory: loss and median tolerance = C_ENS x spread of the emulated fp32 runs
C_BUDGET = 2.0        # trajectory: per-element final-param tolerance = C_BUDGET x AdamW budget
C_ENS_MAX = 4.0       #   + C_ENS_MAX x max spread of the emulated fp32 runs
N_ENSEMBLE = 3        # number of emulated fp32 trajectories
NEAR_TIE = 1e-5       # routing: a selection gap below this is a near-tie


# ----------------------------------------------------------------------------------------------
# tolerance model
# ----------------------------------------------------------------------------------------------
def fp32_rtol(cfg, B, T):
    """rtol = C_SAFE sqrt(D K) u, see the module docstring."""
    D = 2 * (8 * cfg.n_layers + 3)
    K = max(cfg.d_model, cfg.d_ff, T, B * T, cfg.vocab_size, cfg.n_experts)
    return C_SAFE * math.sqrt(D * K) * U32


# ----------------------------------------------------------------------------------------------
# result rows
# ----------------------------------------------------------------------------------------------
def row(section, name, err, tol, ok=None, note=""):
    """One result: err = max|cpp - ref| (for per-element criteria: at the worst element), tol the
    tolerance it is held to, ratio = err/tol."""
    ok = (err <= tol) if ok is None else ok
    ratio = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
    return {"section": section, "name": name, "max_abs_err": float(err), "tol": float(tol),
            "ratio": float(ratio), "ok": bool(ok), "note": note}


def tensor_row(section, name, cpp, ref, atol, rtol, ref32_err=None):
    """Per-tensor criterion max|cpp-ref| <= max(atol + rtol max|ref|, C_REF32 * ref32_err)."""
    cpp = torch.as_tensor(np.asarray(cpp), dtype=torch.float64)
    ref = ref.detach().to(torch.float64)
    if tuple(cpp.shape) != tuple(ref.shape):
        return row(section, name, float("inf"), 0.0, False,
                   f"shape {tuple(cpp.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(cpp).all():
        return row(section, name, float("inf"), 0.0, False, "non-finite values")
    err = (cpp - ref).abs().max().item() if cpp.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    tol = atol + rtol * scale
    note = ""
    if ref32_err is not None and C_REF32 * ref32_err > tol:
        tol = C_REF32 * ref32_err
        note = "tol widened to 4x reference fp32 error"
    return row(section, name, err, tol, note=note)


# ----------------------------------------------------------------------------------------------
# reference computation
# ----------------------------------------------------------------------------------------------
def params_from(arrays, dtype):
    return OrderedDict((n, torch.tensor(np.asarray(a), dtype=dtype).requires_grad_(True))
                       for n, a in arrays.items())


def validate_structure(dump, cfg):
    """Names and shapes of params/grads/final against docs/model.md.  Returns list of failed rows."""
    rows = []
    want = OrderedDict((n, tuple(s)) for n, s, _ in R.param_specs(cfg))
    groups = [("params", dump["params"]), ("grads", dump["grads"])]
    if dump["train"] is not None:
        groups.append(("train/final", dump["train"]["final"]))
    for gname, arrays in groups:
        for n in want:
            if n not in arrays:
                rows.append(row("structure", f"{gname}/{n}", float("inf"), 0, False, "missing"))
            elif tuple(arrays[n].shape) != want[n]:
                rows.append(row("structure", f"{gname}/{n}", float("inf"), 0, False,
                                f"shape {tuple(arrays[n].shape)} != {want[n]}"))
        for n in arrays:
            if n not in want:
                rows.append(row("structure", f"{gname}/{n}", float("inf"), 0, False, "unexpected"))
    n_moe = len(cfg.moe_blocks())
    if len(dump["routing"]) != n_moe:
        rows.append(row("structure", "routing", float("inf"), 0, False,
                        f"{len(dump['routing'])} routing layers, model has {n_moe} MoE layers"))
    return rows


def valid_forced(dump, cfg, N):
    """The dump's expert choices, if they are usable to force the reference (right shape, ids in
    range, distinct per token); else None (the reference then routes by itself)."""
    forced = []
    for r in dump["routing"]:
        e = r["experts"]
        if e.shape != (N, cfg.top_k) or e.min() < 0 or e.max() >= cfg.n_experts:
            return None
        if any(len(set(rw.tolist())) != cfg.top_k for rw in e):
            return None
        forced.append(torch.as_tensor(e))
    return forced if len(forced) == len(cfg.moe_blocks()) else None


def reference_single(dump, cfg):
    """Float64 forward/backward on /batch with the dump's routing forced (own choice recorded),
    plus the same in float32 to measure the reference's own fp32 error per tensor."""
    inputs, targets = dump["inputs"], dump["targets"]
    N = inputs.size
    forced = valid_forced(dump, cfg, N)
    P64 = params_from(dump["params"], torch.float64)
    out64, g64 = R.forward_backward(P64, cfg, inputs, targets, forced)
    # the fp32 run is forced to the routing the fp64 run used, so that it measures rounding only
    used = [r["experts"] for r in out64["routing"]]
    P32 = params_from(dump["params"], torch.float32)
    out32, g32 = R.forward_backward(P32, cfg, inputs, targets, used)

    def e32(a, b):
        return (a.detach().double() - b.detach()).abs().max().item() if b.numel() else 0.0

    err32 = {"logits": e32(out32["logits"], out64["logits"])}
    for k in ("loss", "ce_loss", "aux_loss"):
        err32[k] = e32(out32[k], out64[k])
    for n in g64:
        err32["grad:" + n] = e32(g32[n], g64[n])
    for m, (r32, r64) in enumerate(zip(out32["routing"], out64["routing"])):
        err32[f"gates:{m}"] = e32(r32["gates"], r64["gates"])
    return {"out": out64, "grads": g64, "err32": err32, "forced": forced is not None}


def adam_ratio_bound(t, beta1, beta2):
    """A_t >= |m^_t| / sqrt(v^_t) for any gradient sequence (Cauchy-Schwarz):
    m_t = (1-b1) sum_j b1^j g_{t-j},  v_t = (1-b2) sum_j b2^j g_{t-j}^2
    |m_t| <= (1-b1) sqrt(sum_j b1^2j / b2^j) sqrt(v_t / (1-b2))
    A_t = (1-b1)/(1-b1^t) * sqrt((1-b2^t)/(1-b2)) * sqrt(sum_{j<t} (b1^2/b2)^j)   (A_1 = 1)."""
    s = sum((beta1 * beta1 / beta2) ** j for j in range(t))
    return (1 - beta1) / (1 - beta1 ** t) * math.sqrt((1 - beta2 ** t) / (1 - beta2)) * math.sqrt(s)


def run_trajectory(dump, cfg, dtype=torch.float64, jitter=0.0, seed=0, budget_rtol=None):
    """AdamW training from the dump's initial params over /train (lr_at, clipping), in `dtype`.
    jitter > 0: the initial params are moved by a random +-1 ulp each, and after every backward each
    gradient element is multiplied by (1 + jitter * xi), xi ~ N(0, 1): a float32 implementation with
    its own rounding and a per-element relative gradient error `jitter`.
    budget_rtol: also accumulate the per-element first-order AdamW error budget (module docstring)
    for a gradient error bound delta = budget_rtol * max|g| (+ atol) per tensor.
    Returns dict(losses [S], final params (float64), margins, scales (max(|L|, max|logits|)), budget)."""
    tr = dump["train"]
    P = params_from(dump["params"], dtype)
    gen = torch.Generator().manual_seed(seed)
    if jitter > 0:
        # a different rounding realization: every initial element moved by +-1 ulp (float32), so
        # that gradients that are rounding noise (cancellations) get fresh noise, not torch's
        with torch.no_grad():
            for t in P.values():
                sign = torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1
                t.copy_(torch.nextafter(t, sign * float("inf")))
    opt = R.make_optimizer(P, cfg)
    budget = OrderedDict((n, torch.zeros(t.shape, dtype=torch.float64)) for n, t in P.items())
    delta_run = OrderedDict((n, 0.0) for n in P)
    losses, margins, scales = [], [], []
    for s in range(tr["inputs"].shape[0]):
        opt.zero_grad(set_to_none=True)
        out = R.forward(P, cfg, tr["inputs"][s], tr["targets"][s])
        out["loss"].backward()
        losses.append(out["loss"].item())
        scales.append(max(abs(losses[-1]), out["logits"].abs().max().item()))
        margins.append(min([r["margin"].min().item() for r in out["routing"]] + [float("inf")]))
        for t in P.values():
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            if jitter > 0:
                t.grad *= 1 + jitter * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(P.values()), cfg.grad_clip)
        if budget_rtol is not None:       # fp32 gradient error bound of this step (running max)
            G = max(t.grad.abs().max().item() for t in P.values())
            for n, t in P.items():
                d = GRAD_ATOL_FRAC * budget_rtol * G + budget_rtol * t.grad.abs().max().item()
                delta_run[n] = max(delta_run[n], d)
        lr = R.lr_at(s, cfg)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.step()
        if budget_rtol is not None:
            # |d(m^/(sqrt(v^)+eps))| <= delta (1 + r) / (sqrt(v^) + eps), r = |m^|/(sqrt(v^)+eps),
            # and never more than 2 A_t (both updates are bounded by A_t)
            A = adam_ratio_bound(s + 1, cfg.beta1, cfg.beta2)
            bc1, bc2 = 1 - cfg.beta1 ** (s + 1), 1 - cfg.beta2 ** (s + 1)
            for n, t in P.items():
                st = opt.state[t]
                denom = (st["exp_avg_sq"] / bc2).sqrt() + cfg.eps
                r = (st["exp_avg"] / bc1).abs() / denom
                b = torch.clamp(delta_run[n] * (1 + r) / denom, max=2 * A)
                budget[n] += (lr * b + U32 * t.detach().abs()).double()
    final = OrderedDict((n, t.detach().to(torch.float64).clone()) for n, t in P.items())
    return {"losses": losses, "final": final, "margins": margins, "scales": scales, "budget": budget}


def key_bias_mask(name, shape, cfg):
    """The key slice [d, 2d) of attn.qkv.bias: softmax is invariant to it (it adds q_i.b_k to every
    score of row i), so its exact gradient is 0 and its float32 trajectory is rounding noise that
    AdamW amplifies.  Those elements are held only to the AdamW step bound."""
    m = torch.zeros(shape, dtype=torch.bool)
    if name.endswith("attn.qkv.bias"):
        m[cfg.d_model: 2 * cfg.d_model] = True
    return m


def reference_trajectory(dump, cfg, rtol):
    """The exact (float64) trajectory, and the spread around it of N_ENSEMBLE float32 runs of the
    reference with per-element gradient jitter sqrt(D K) u (module docstring)."""
    exact = run_trajectory(dump, cfg, budget_rtol=rtol)
    losses, final = exact["losses"], exact["final"]
    jitter = rtol / C_SAFE                        # sqrt(D K) u
    loss_dev = [0.0] * len(losses)
    fin_max = OrderedDict((n, 0.0) for n in final)
    fin_med = OrderedDict((n, 0.0) for n in final)
    for k in range(N_ENSEMBLE):
        emu = run_trajectory(dump, cfg, torch.float32, jitter, seed=1234 + k)
        loss_dev = [max(d, abs(a - b)) for d, a, b in zip(loss_dev, emu["losses"], losses)]
        for n in final:
            keep = ~key_bias_mask(n, final[n].shape, cfg)
            dev = (emu["final"][n] - final[n])[keep]
            if dev.numel():
                fin_max[n] = max(fin_max[n], dev.abs().max().item())
                fin_med[n] = max(fin_med[n], dev.abs().median().item())
    # envelope: running maximum over the steps so far (conservative)
    env = [max(loss_dev[: s + 1]) for s in range(len(loss_dev))]
    S = len(losses)
    adam_bound = sum(2 * R.lr_at(s, cfg) * adam_ratio_bound(s + 1, cfg.beta1, cfg.beta2) for s in range(S))
    return {"losses": losses, "final": final, "margins": exact["margins"], "scales": exact["scales"],
            "min_margin": min(exact["margins"]) if S else float("inf"),
            "loss_env": env, "final_max_env": fin_max, "final_med_env": fin_med, "adam_bound": adam_bound,
            "budget": exact["budget"]}


def compute_reference(dump):
    """Everything the comparison needs from the reference (independent of the dump's outputs,
    except that the dump's routing is forced in the single-step run)."""
    cfg = R.Config(dump["config"])
    B, T = dump["inputs"].shape
    ref = {"cfg": cfg, "rtol": fp32_rtol(cfg, B, T)}
    ref["structure"] = validate_structure(dump, cfg)
    if ref["structure"]:
        return ref
    ref["single"] = reference_single(dump, cfg)
    if dump["train"] is not None:
        Bt, Tt = dump["train"]["inputs"].shape[1:]
        ref["traj_rtol"] = fp32_rtol(cfg, Bt, Tt)
        ref["traj"] = reference_trajectory(dump, cfg, ref["traj_rtol"])
    return ref


# ----------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------
def classify_routing(cpp_experts, own_experts, sel, threshold=NEAR_TIE):
    """Compare the dump's expert lists with the reference's own top-k (per token, in order).
    A differing token is a near-tie if the dump's list is a valid descending top-k of the
    reference's selection vector within `threshold`: |sel[i, cpp_ij] - sorted(sel_i)_j| <= threshold
    for every j (then the reference's selection margin there is below the threshold too).
    Returns (n_mismatch, n_near_tie, [details of real mismatches])."""
    cpp = torch.as_tensor(cpp_experts).long()
    own = torch.as_tensor(own_experts).long()
    k = own.shape[1]
    diff = (cpp != own).any(dim=1).nonzero().squeeze(1).tolist()
    srt, _ = torch.sort(sel, dim=1, descending=True, stable=True)
    margin = R.selection_margin(sel, k)
    near, real = 0, []
    for i in diff:
        row_ = cpp[i]
        ok_ids = bool(((row_ >= 0) & (row_ < sel.shape[1])).all()) and len(set(row_.tolist())) == k
        gap = (sel[i, row_.clamp(0, sel.shape[1] - 1)] - srt[i, :k]).abs().max().item() if ok_ids else float("inf")
        if ok_ids and gap <= threshold:
            near += 1
        else:
            real.append({"token": i, "cpp": row_.tolist(), "ref": own[i].tolist(),
                         "ref_margin": margin[i].item(), "sel_gap": gap})
    return len(diff), near, real


def compare(dump, ref):
    """All result rows (list of dicts) for a dump and its reference results."""
    rows = list(ref["structure"])
    if rows:
        return rows
    cfg, rtol = ref["cfg"], ref["rtol"]
    single = ref["single"]
    out, grads, err32 = single["out"], single["grads"], single["err32"]

    # (a) forward outputs
    rows.append(tensor_row("forward", "logits", dump["logits"], out["logits"], 0.0, rtol, err32["logits"]))
    loss_scale = max(abs(out["loss"].item()), out["logits"].abs().max().item())
    for k in ("loss", "ce_loss"):
        rows.append(tensor_row("forward", k, np.float64(dump[k]), out[k], rtol * loss_scale, 0.0, err32[k]))
    rows.append(tensor_row("forward", "aux_loss", np.float64(dump["aux_loss"]), out["aux_loss"], 0.0, rtol, err32["aux_loss"]))

    # (b) routing: own choice (teacher-forced on the dump's earlier layers) vs the dump
    for m, (info, r) in enumerate(zip(out["routing"], dump["routing"])):
        n_mis, n_near, real = classify_routing(r["experts"], info["own_experts"], info["sel"])
        note = f"router={info['router']} tokens={r['experts'].shape[0]} mismatches={n_mis} near-ties={n_near} real={len(real)}"
        if real:
            x = real[0]
            note += (f"; e.g. token {x['token']}: cpp {x['cpp']} ref {x['ref']} "
                     f"(ref margin {x['ref_margin']:.2e})")
        if not single["forced"]:
            note += "; dump routing unusable, not forced"
        rows.append(row("routing", f"layer{m}/experts", float(len(real)), 0.0, len(real) == 0 and single["forced"], note))
        if r.get("gates") is not None:
            rows.append(tensor_row("routing", f"layer{m}/gates", r["gates"], info["gates"], 0.0, rtol,
                                   err32[f"gates:{m}"]))

    # (a) gradients
    gmax = max(g.abs().max().item() for g in grads.values())
    atol_g = GRAD_ATOL_FRAC * rtol * gmax
    for n, g in grads.items():
        rows.append(tensor_row("grad", n, dump["grads"][n], g, atol_g, rtol, err32["grad:" + n]))

    # (c) trajectory
    if "traj" in ref:
        tr, dtr = ref["traj"], dump["train"]
        trtol = ref["traj_rtol"]
        if len(dtr["losses"]) != len(tr["losses"]):
            rows.append(row("train", "losses", float("inf"), 0, False,
                            f"{len(dtr['losses'])} losses, reference ran {len(tr['losses'])} steps"))
        for s, (lc, lr_, env) in enumerate(zip(dtr["losses"], tr["losses"], tr["loss_env"])):
            # rounding of this step's forward (as (a)) + C_ENS x the emulated fp32 spread
            tol = trtol * tr["scales"][s] + C_ENS * env
            note = f"ref={lr_:.6f}"
            if tr["margins"][s] < NEAR_TIE:
                note += f"; routing near-tie in this step (margin {tr['margins'][s]:.1e})"
            err = abs(float(lc) - lr_) if np.isfinite(lc) else float("inf")
            rows.append(row("train", f"loss[{s}]", err, tol, note=note))
        for n, ref_p in tr["final"].items():
            cpp = torch.as_tensor(np.asarray(dtr["final"][n]), dtype=torch.float64)
            if tuple(cpp.shape) != tuple(ref_p.shape):
                rows.append(row("final", n, float("inf"), 0, False, "shape mismatch"))
                continue
            if not torch.isfinite(cpp).all():
                rows.append(row("final", n, float("inf"), 0, False, "non-finite values"))
                continue
            kb = key_bias_mask(n, ref_p.shape, cfg)
            d = (cpp - ref_p)[~kb]
            floor = U32 * ref_p.abs().max().item()            # one float32 ulp of the tensor
            # max criterion, per element: first-order AdamW budget + C_ENS_MAX x ensemble max
            tol_el = (C_BUDGET * tr["budget"][n][~kb] + C_ENS_MAX * tr["final_max_env"][n] + floor).reshape(-1)
            j = int((d.abs().reshape(-1) / tol_el).argmax()) if d.numel() else 0
            emax, tmax = (d.abs().reshape(-1)[j].item(), tol_el[j].item()) if d.numel() else (0.0, 1.0)
            emed = d.abs().median().item() if d.numel() else 0.0
            tmed = C_ENS * tr["final_med_env"][n] + floor
            ok = emax <= tmax and emed <= tmed
            extra = ""
            if kb.any():
                ekb = (cpp - ref_p)[kb].abs().max().item()
                ok = ok and ekb <= tr["adam_bound"] + floor
                extra = f"; key bias {ekb:.2e} <= AdamW bound {tr['adam_bound']:.2e}"
            # show the criterion that is closer to failing
            if emed / tmed > emax / tmax:
                rows.append(row("final", n, emed, tmed, ok, note=f"median criterion (max|err| {emax:.2e} vs {tmax:.2e}){extra}"))
            else:
                rows.append(row("final", n, emax, tmax, ok, note=f"max criterion (median|err| {emed:.2e} vs {tmed:.2e}){extra}"))
    return rows


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def print_table(rows, ref, path, quiet=False, file=sys.stdout):
    print(f"parity check of {path}", file=file)
    if "cfg" in ref:
        c = ref["cfg"]
        print(f"  routers={c.routers} moe_every={c.moe_every} L={c.n_layers} d={c.d_model} E={c.n_experts} "
              f"k={c.top_k} C={c.capacity_factor}  rtol(fp32 model)={ref['rtol']:.2e}", file=file)
    w = max([len(r["section"]) + len(r["name"]) + 1 for r in rows] + [20])
    print(f"{'tensor':<{w}}  {'max|err|':>10}  {'tol':>10}  {'err/tol':>8}  ok", file=file)
    for r in rows:
        if quiet and r["ok"]:
            continue
        name = f"{r['section']}:{r['name']}"
        print(f"{name:<{w}}  {r['max_abs_err']:>10.3e}  {r['tol']:>10.3e}  {r['ratio']:>8.3f}  "
              f"{'ok' if r['ok'] else 'FAIL'}{'  ' + r['note'] if r['note'] else ''}", file=file)
    n_fail = sum(not r["ok"] for r in rows)
    if "traj" in ref and ref["traj"]["min_margin"] < NEAR_TIE:
        print(f"note: the reference trajectory has a routing near-tie (margin "
              f"{ref['traj']['min_margin']:.1e}); a flip there in float32 can explain a trajectory mismatch", file=file)
    print(f"{'PASS' if n_fail == 0 else 'FAIL'}: {len(rows) - n_fail}/{len(rows)} checks passed", file=file)


def check(path):
    """Read, compute, compare.  Returns (rows, ref)."""
    dump = read_dump(path)
    ref = compute_reference(dump)
    return compare(dump, ref), ref


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check a routemoe C++ dump against the PyTorch reference.")
    ap.add_argument("dump")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--quiet", action="store_true", help="print only failing rows and the summary")
    a = ap.parse_args(argv)
    try:
        rows, ref = check(a.dump)
    except (OSError, KeyError, ValueError) as e:
        print(f"check_parity: cannot check {a.dump}: {e}", file=sys.stderr)
        return 1
    print_table(rows, ref, a.dump, quiet=a.quiet)
    passed = all(r["ok"] for r in rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dump": a.dump, "passed": passed, "rtol": ref.get("rtol"),
                       "traj_rtol": ref.get("traj_rtol"), "rows": rows}, f, indent=1)
    return 0 if passed else 1


if __name__ == "__main__":
    # test models are tiny: extra threads only add contention (ROUTEMOE_REF_THREADS to change)
    torch.set_num_threads(int(os.environ.get("ROUTEMOE_REF_THREADS", "1")))
    sys.exit(main())
