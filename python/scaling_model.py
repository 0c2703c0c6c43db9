#!/usr/bin/env python3
"""The cost model of one routemoe training step (docs/scaling.md).

    python3 python/scaling_model.py <measurements dir> [--cores N]

<measurements dir> is what launch/scaling-measure.sh wrote. The script
  1. fits the model's constants to those measurements: the compute rate of one core (from the
     1-rank run of examples/configs/tiny.toml), the exchange as latency + bytes / bandwidth
     (least squares over bench alltoall's 256..8192-token cases, one host and two hosts) and the
     all-reduce the same way;
  2. checks the model against the measured 2- and 4-rank runs (predicted vs measured step);
  3. projects a stated GPU model to 8..256 GPUs on public interconnect figures (constants below,
     with their sources) and prints tokens/s per GPU, the exchange's share of the step, and the
     expert-parallel size at which the exchange stops being hidden behind the experts.
It prints Markdown. Only the Python standard library is needed.

The step (per rank, one rank per core or GPU; n tokens per rank; every block an MoE block):
  compute   = step_flops(n) / R                      (layers/model.cpp, Model::step_flops)
  experts   = the experts' share of compute           (4 k d F of each token's forward, x3)
  exchange  = 4 all-to-alls per MoE layer (dispatch and combine, forward and backward), each
              alpha + remote bytes / beta, remote bytes = n k d b (EP - 1) / EP
  allreduce = the dense (non-expert) gradients: 2 (DP' - 1) / DP' S / beta_ar + alpha_ar, DP' =
              ranks holding a replica (all of them: attention, embeddings and norms are
              replicated on every rank)
  blocking step   = compute + exchange + allreduce
  overlapped step = compute + max(0, exchange - experts) + allreduce  (the chunked exchange
              hides behind the expert FFNs; the all-reduce is not overlapped in routemoe)
"""

import argparse
import json
import os
import statistics
import sys

# ---- the model's FLOPs (the same formula as Model::step_flops, layers/model.cpp) ----


def fwd_flops_per_token(m):
    """Forward FLOPs of one token: attention (QKV, scores and context over the full T x T, output
    projection), the experts (top-k FFNs), the router, the tied LM head."""
    d, T, F, k, E, V, L = (m[x] for x in ("d", "T", "F", "k", "E", "V", "L"))
    attention = 2 * d * 3 * d + 2 * 2 * T * d + 2 * d * d
    experts = 2 * 2 * k * d * F
    router = 2 * d * E
    return L * (attention + experts + router) + 2 * d * V, L * experts


def step_flops(m, tokens):
    """(all, experts) FLOPs of one training step on `tokens` tokens (backward = 2 x forward)."""
    total, experts = fwd_flops_per_token(m)
    return 3 * total * tokens, 3 * experts * tokens


def dense_params(m):
    """Parameters every rank holds a replica of: embeddings, attention, norms, routers."""
    d, E, V, L = m["d"], m["E"], m["V"], m["L"]
    return V * d + m["T"] * d + L * (4 * d * d + 4 * d + 4 * d + d * E) + 2 * d


# ---- fitting ----


def fit_line(xs, ys):
    """y = a + b x minimising the squared *relative* error (weights 1 / y^2), so that the small
    cases, where the latency a shows, count as much as the large ones; a is kept >= 0 (a
    negative latency means the data cannot separate it: then y = b x)."""
    w = [1.0 / (y * y) for y in ys]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs)) / sw
    my = sum(wi * y for wi, y in zip(w, ys)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    b = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys)) / sxx
    a = my - b * mx
    if a < 0:
        a, b = 0.0, sum(wi * x * y for wi, x, y in zip(w, xs, ys)) / sum(
            wi * x * x for wi, x in zip(w, xs))
    return a, b


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fit_exchange(doc):
    """From bench alltoall's JSON: the exchange (plan + dispatch + combine = two all-to-alls of
    the case's bytes) as 2 alpha + bytes / beta, the bare MPI_Alltoallv pair the same way, the
    all-reduce as alpha + bytes / beta, and the overlap rows."""
    cases = [c for c in doc["cases"] if "tokens" in c]
    ar = [c for c in doc["cases"] if c.get("case") == "allreduce"]
    xs = [c["bytes_per_rank"] for c in cases]
    a_ours, b_ours = fit_line(xs, [c["ours_s"] for c in cases])
    a_bare, b_bare = fit_line(xs, [c["bare_s"] for c in cases])
    out = dict(alpha=a_ours / 2, beta=1 / b_ours, alpha_bare=a_bare / 2, beta_bare=1 / b_bare,
               cases=cases, load=doc.get("other_cores"), shared=doc.get("machine_shared"))
    if len(ar) >= 2:
        a, b = fit_line([c["bytes"] for c in ar], [c["allreduce_s"] for c in ar])
        out.update(ar_alpha=a, ar_beta=1 / b, ar_cases=ar)
    return out


def median_tokens_per_s(run_dir):
    vals = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and rec.get("step", 0) > 5 and "tokens_per_s" in rec:
                vals.append(rec["tokens_per_s"])
    return statistics.median(vals) if vals else None


# ---- the step ----


def step_time(m, ranks, ep, tokens_per_rank, rate, xch, ar, bytes_per_elem, cores=None):
    """Seconds of one step on every rank, blocking and overlapped, and its parts."""
    flops, expert_flops = step_flops(m, tokens_per_rank)
    busy = ranks if cores is None else min(ranks, cores)
    slow = ranks / busy  # ranks sharing a core (oversubscribed runs)
    compute = flops / rate * slow
    experts = expert_flops / rate * slow
    exchange = 0.0
    if ep > 1:
        remote = tokens_per_rank * m["k"] * m["d"] * bytes_per_elem * (ep - 1) / ep
        exchange = m["L"] * 4 * xch(remote, ep)
    allreduce = 0.0
    if ranks > 1:
        s = dense_params(m) * 4  # fp32 gradients
        allreduce = ar(s, ranks)
    blocking = compute + exchange + allreduce
    overlapped = compute + max(0.0, exchange - experts) + allreduce
    return dict(compute=compute, experts=experts, exchange=exchange, allreduce=allreduce,
                blocking=blocking, overlapped=overlapped)


# ---- the GPU projection: public figures (docs/scaling.md cites them) ----

GPU = dict(
    # H100 SXM5 dense BF16 tensor-core peak (NVIDIA H100 Tensor Core GPU datasheet): 989 TFLOP/s.
    # Measured for this page on one H200 (the same chip, 2026-11-30, PyTorch 2.11 bf16 matmul,
    # CUDA events, 20 products after 3 warm-ups, three timings each): 8192^3 722 / 722 / 797
    # TFLOP/s; expert-shaped 16384x4096x2048 648..655, 16384x2048x4096 695..711. Ceiling: 722.
    # The step is assumed to run at issue 9's target, 35 % of that ceiling.
    rate=0.35 * 722e12,
    gpus_per_node=8,
    # NVLink 4 (H100 SXM): 900 GB/s per GPU, both directions together -> 450 GB/s each way
    # (NVIDIA H100 datasheet; DGX H100 user guide).
    nvlink=450e9,
    # InfiniBand NDR, one 400 Gb/s ConnectX-7 port per GPU (DGX H100): 50 GB/s each way.
    ib=50e9,
    # Latency of one all-to-all, an assumption (NCCL's own figures are of this order within a
    # node; across nodes it grows with the peers): 20 us + 1 us per peer.
    alpha=20e-6,
    alpha_per_peer=1e-6,
)

# The projected model: a GPT-MoE of a size trained on such clusters (all blocks MoE).
GPU_MODEL = dict(d=2048, T=2048, F=4096, k=2, E=64, V=50304, L=24)
GPU_TOKENS = 16384  # tokens per GPU per step (8 sequences of 2048)


def gpu_exchange(remote_bytes, ep, hw=GPU):
    """One all-to-all of `remote_bytes` per GPU over NVLink inside a node and InfiniBand across."""
    g = hw["gpus_per_node"]
    in_node = min(ep, g)
    # of the remote bytes, those to GPUs of the same node vs other nodes
    frac_node = (in_node - 1) / (ep - 1)
    t_node = remote_bytes * frac_node / hw["nvlink"]
    t_net = remote_bytes * (1 - frac_node) / hw["ib"]
    return hw["alpha"] + hw["alpha_per_peer"] * (ep - 1) + max(t_node, t_net)


def gpu_allreduce(size, ranks, hw=GPU):
    """Ring all-reduce; the ring's slowest link is InfiniBand once it leaves the node."""
    bw = hw["nvlink"] if ranks <= hw["gpus_per_node"] else hw["ib"]
    return 2 * (ranks - 1) / ranks * size / bw + 2 * (ranks - 1) * hw["alpha_per_peer"]


# ---- output ----


def ms(s):
    return f"{s * 1e3:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the measurements (launch/scaling-measure.sh)")
    p.add_argument("--cores", type=int, default=os.cpu_count(),
                   help="cores of the measuring machine (default: this one's)")
    args = p.parse_args(argv)
    d = args.dir
    tiny = dict(d=128, T=128, F=256, k=2, E=4, V=256, L=4)  # examples/configs/tiny.toml
    batch = 8

    print("## Fitted on this machine\n")
    gemm = load(os.path.join(d, "gemm.json")) if os.path.exists(os.path.join(d, "gemm.json")) else None
    if gemm:
        print(f"- square-GEMM ceiling, 1 thread: {gemm['ceiling_gflops']:.1f} GFLOP/s")
    runs = {}
    for np_ in (1, 2, 4):
        rd = os.path.join(d, f"train_np{np_}")
        if os.path.exists(os.path.join(rd, "metrics.jsonl")):
            runs[np_] = median_tokens_per_s(rd)
    if 1 not in runs:
        sys.exit("scaling_model: no train_np1 run in " + d)
    t1 = batch * tiny["T"] / runs[1]
    rate = step_flops(tiny, batch * tiny["T"])[0] / t1
    print(f"- compute rate R of one core on tiny.toml's step (1 rank, 1 thread): "
          f"{rate * 1e-9:.1f} GFLOP/s (step {ms(t1)} ms, {runs[1]:.0f} tokens/s)")
    fits = {}
    for name, label in (("a2a_1host", "one host, shared memory"),
                        ("a2a_2hosts", "two hosts, TCP over a veth pair")):
        path = os.path.join(d, name + ".json")
        if not os.path.exists(path):
            continue
        f = fit_exchange(load(path))
        fits[name] = f
        print(f"- exchange, {label}: alpha {f['alpha'] * 1e6:.1f} us per all-to-all, "
              f"beta {f['beta'] * 1e-9:.2f} GB/s (bare MPI_Alltoallv: alpha "
              f"{f['alpha_bare'] * 1e6:.1f} us, beta {f['beta_bare'] * 1e-9:.2f} GB/s)"
              + (f"; all-reduce alpha {f['ar_alpha'] * 1e6:.1f} us, beta "
                 f"{f['ar_beta'] * 1e-9:.2f} GB/s" if "ar_alpha" in f else "")
              + (f"; other processes used {f['load']:.2f} cores" if f.get("load") is not None
                 else ""))
    print()
    for name, f in fits.items():
        print(f"{name}: the exchange per case, measured and fitted\n")
        print("| tokens/rank | exchange measured (ms) | model (ms) | bare (ms) | overlapped / "
              "(exchange + experts) |")
        print("|---|---|---|---|---|")
        for c in f["cases"]:
            model = 2 * f["alpha"] + c["bytes_per_rank"] / f["beta"]
            serial = c["ours_s"] + c["compute_s"]
            ov = f"{c['overlapped_s'] / serial:.3f}" if c.get("overlapped_s") and serial > 0 else "-"
            print(f"| {c['tokens']} | {ms(c['ours_s'])} | {ms(model)} | {ms(c['bare_s'])} | {ov} |")
        print()

    print("## Check: the model against the measured runs (tiny.toml, one host)\n")
    print("| ranks (ep) | measured step (ms) | model, blocking (ms) | model, overlapped (ms) | "
          "compute / exchange / all-reduce (ms) |")
    print("|---|---|---|---|---|")
    f = fits.get("a2a_1host")
    for np_, tps in sorted(runs.items()):
        measured = batch * tiny["T"] / tps
        if f is None:
            continue
        xch = lambda b, ep, f=f: f["alpha"] + b / f["beta"]  # noqa: E731
        arf = (lambda s, r, f=f: f["ar_alpha"] + 2 * (r - 1) / r * s / f["ar_beta"]) if "ar_alpha" in f \
            else (lambda s, r: 0.0)
        st = step_time(tiny, np_, np_, batch * tiny["T"] // np_, rate, xch, arf, 4, args.cores)
        print(f"| {np_} ({np_}) | {ms(measured)} | {ms(st['blocking'])} | {ms(st['overlapped'])} | "
              f"{ms(st['compute'])} / {ms(st['exchange'])} / {ms(st['allreduce'])} |")
    print()

    print("## Projection: GPUs (public interconnect figures, stated model)\n")
    m = GPU_MODEL
    print(f"Model: d {m['d']}, {m['L']} MoE blocks, {m['E']} experts top-{m['k']}, d_ff {m['F']}, "
          f"T {m['T']}, vocabulary {m['V']}; {GPU_TOKENS} tokens per GPU per step, bf16 "
          f"activations exchanged; compute at {GPU['rate'] * 1e-12:.0f} TFLOP/s per GPU; "
          f"expert-parallel size EP = min(GPUs, experts), data parallel across EP groups.\n")
    print("| GPUs | EP | step, overlapped (ms) | tokens/s per GPU | exchange / step | "
          "exchange hidden? | exchange, experts per step (ms) | all-reduce (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    first_exposed = None
    for gpus in (8, 16, 32, 64, 128, 256):
        ep = min(gpus, m["E"])
        st = step_time(m, gpus, ep, GPU_TOKENS, GPU["rate"], gpu_exchange, gpu_allreduce, 2)
        hidden = st["exchange"] <= st["experts"]
        if not hidden and first_exposed is None:
            first_exposed = ep
        print(f"| {gpus} | {ep} | {ms(st['overlapped'])} | {GPU_TOKENS / st['overlapped']:.0f} | "
              f"{st['exchange'] / st['blocking']:.2f} | {'yes' if hidden else 'no'} | "
              f"{ms(st['exchange'])}, {ms(st['experts'])} | {ms(st['allreduce'])} |")
    print()
    # Where the exchange stops being hidden: the tokens per GPU at which exchange = experts, for
    # EP inside one node and across nodes (the exchange and the expert FLOPs both scale with the
    # tokens, so the crossover is a ratio, not a token count; print it per EP).
    # The exchange and the expert FLOPs both grow with the tokens, so whether the exchange hides
    # is a ratio that depends on EP, the network and the compute rate, hardly on the tokens.
    print("Exchange time / expert time per step (below 1: hidden behind the experts):\n")
    print("| EP | NDR 400 Gb/s, 35 % MFU | HDR 200 Gb/s, 35 % MFU | NDR 400 Gb/s, 60 % MFU |")
    print("|---|---|---|---|")
    for ep in (2, 4, 8, 16, 32, 64):
        row = []
        for ib, mfu in ((50e9, 0.35), (25e9, 0.35), (50e9, 0.60)):
            hw = dict(GPU, ib=ib, rate=mfu * 722e12)
            st = step_time(m, ep, ep, GPU_TOKENS, hw["rate"],
                           lambda b, e, hw=hw: gpu_exchange(b, e, hw),
                           lambda z, r, hw=hw: gpu_allreduce(z, r, hw), 2)
            row.append(f"{st['exchange'] / st['experts']:.2f}")
        print(f"| {ep} | " + " | ".join(row) + " |")
    print()
    if first_exposed is None:
        print("The exchange stays hidden behind the experts at every size above.")
    else:
        print(f"The exchange is no longer hidden from EP = {first_exposed} on.")


if __name__ == "__main__":
    main()
