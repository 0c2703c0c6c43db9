"""Time one training step of the PyTorch reference model (reference_model.py) for `routemoe bench
train`, which launches this script as a subprocess and compares the result with its own step.

A training step here is exactly what the C++ side times: zero the gradients, forward + backward
of the loss, clip by global norm, one torch.optim.AdamW update. Weights are random (torch's
generator), data are random tokens of the requested shape; only the time matters.

Prints exactly one JSON line on stdout:
    {"ok": true, "router": ..., "threads": ..., "median_s": ..., "step_s": [...], ...}
or, when torch is missing or the step fails, {"ok": false, "error": "..."} and exit status 2.

Run with Debian's python (/usr/bin/python3): torch 1.13.
"""

import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", default="topk", choices=["topk", "similarity", "attention", "ac"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--n-experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--moe-every", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    # The optimiser settings of the C++ side (framework/optim.h OptimConfig defaults).
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--probe", action="store_true",
                    help="only check that torch imports; print its version and thread count")
    a = ap.parse_args()

    def fail(msg):
        print(json.dumps({"ok": False, "error": msg}), flush=True)
        sys.exit(2)

    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch here"
        fail(f"cannot import torch with {sys.executable}: {e}")

    if a.probe:
        print(json.dumps({"ok": True, "torch": torch.__version__, "python": sys.executable}),
              flush=True)
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_model as ref

    threads = a.threads if a.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)

    try:
        cfg = ref.Config({
            "vocab_size": a.vocab_size, "seq_len": a.seq_len, "d_model": a.d_model,
            "n_heads": a.n_heads, "n_layers": a.n_layers, "d_ff": a.d_ff,
            "n_experts": a.n_experts, "top_k": a.top_k, "moe_every": a.moe_every,
            "routers": [a.router], "lr": a.lr, "beta1": a.beta1, "beta2": a.beta2,
            "eps": a.eps, "weight_decay": a.weight_decay, "grad_clip": a.grad_clip,
        })
        params = ref.init_params(cfg, seed=a.seed, dtype=torch.float32)
        plist = list(params.values())
        opt = torch.optim.AdamW(ref.param_groups(params, cfg), lr=a.lr, betas=(a.beta1, a.beta2),
                                eps=a.eps)
        g = torch.Generator().manual_seed(a.seed)
        inputs = torch.randint(0, a.vocab_size, (a.batch, a.seq_len), generator=g,
                               dtype=torch.int64)
        targets = torch.randint(0, a.vocab_size, (a.batch, a.seq_len), generator=g,
                                dtype=torch.int64)

        def step():
            opt.zero_grad(set_to_none=True)
            out = ref.forward(params, cfg, inputs, targets)
            out["loss"].backward()
            for t in plist:  # parameters the graph did not reach get a zero gradient
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
            if a.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(plist, a.grad_clip)
            opt.step()
            return out["loss"]

        for _ in range(a.warmup):
            step()
        times = []
        loss = None
        for _ in range(a.steps):
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - report, do not crash the C++ side's parse
        fail(f"{type(e).__name__}: {e}")

    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    print(json.dumps({
        "ok": True, "router": a.router, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "batch": a.batch, "seq_len": a.seq_len,
        "median_s": median, "step_s": times, "loss": float(loss),
    }), flush=True)


if __name__ == "__main__":
    main()
