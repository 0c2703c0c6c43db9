#!/usr/bin/python3
"""Write a dump in the C++ dump format whose "C++ outputs" come from the reference itself, run in
float32 (random init, random batch).  Only used to self-test check_parity.py until / besides the C++
side:  check_parity on such a dump must pass, and must fail once a value is perturbed.

    /usr/bin/python3 make_synthetic_dump.py OUT.h5 --router topk [--router ac ...] [options]

--router may be repeated (or comma-separated) to give one router per MoE layer.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as R  # noqa: E402
from dump_io import write_dump  # noqa: E402


def random_batch(gen, cfg, B, T, ignore_frac=0.1):
    inputs = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    targets[torch.rand(B, T, generator=gen) < ignore_frac] = -1
    return inputs, targets


def make_dump(cfg_dict, batch=2, train_steps=3, seed=0, bias_std=0.05, grad_jitter=0.0):
    """Build the dump dict (see dump_io.write_dump) from the float32 reference.
    grad_jitter > 0 multiplies every gradient element by (1 + grad_jitter * xi), xi ~ N(0,1), in the
    written gradients and in every training step: a stand-in for a float32 implementation with
    less accurate reductions than torch's (self-tests use it to show the tolerances' margin)."""
    cfg = R.Config(cfg_dict)
    gen = torch.Generator().manual_seed(seed + 1000)
    T = cfg.seq_len
    P = R.init_params(cfg, seed, torch.float32, bias_std=bias_std)
    init = {n: t.detach().numpy().copy() for n, t in P.items()}

    inputs, targets = random_batch(gen, cfg, batch, T)
    out, grads = R.forward_backward(P, cfg, inputs, targets)
    jgen = torch.Generator().manual_seed(seed + 2000)
    if grad_jitter > 0:
        for g in grads.values():
            g *= 1 + grad_jitter * torch.randn(g.shape, generator=jgen)
    d = {
        "config": cfg.to_dict(),
        "params": init,
        "inputs": inputs.numpy(),
        "targets": targets.numpy(),
        "logits": out["logits"].detach().numpy(),
        "loss": out["loss"].item(),
        "ce_loss": out["ce_loss"].item(),
        "aux_loss": out["aux_loss"].item(),
        "grads": {n: g.numpy() for n, g in grads.items()},
        "routing": [{"experts": r["experts"].numpy(), "gates": r["gates"].numpy()} for r in out["routing"]],
        "train": None,
    }
    if train_steps > 0:
        Pt = R.clone_params(P, torch.float32)
        opt = R.make_optimizer(Pt, cfg)
        tin, ttg, losses = [], [], []
        for s in range(train_steps):
            i, t = random_batch(gen, cfg, batch, T)
            loss, _, _ = R.train_step(Pt, opt, cfg, s, i, t, grad_jitter=grad_jitter, generator=jgen)
            tin.append(i.numpy()), ttg.append(t.numpy()), losses.append(loss)
        d["train"] = {
            "inputs": np.stack(tin), "targets": np.stack(ttg), "losses": np.array(losses),
            "final": {n: t.detach().numpy().copy() for n, t in Pt.items()},
        }
    return d


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--router", action="append", required=True, help="router name(s), repeat or comma-separate")
    ap.add_argument("--vocab-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=64)
    ap.add_argument("--n-experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--moe-every", type=int, default=1)
    ap.add_argument("--capacity-factor", type=float, default=0.0)
    ap.add_argument("--similarity-tau", type=float, default=1.0)
    ap.add_argument("--non-causal", action="store_true", help="similarity_causal = false")
    ap.add_argument("--aux-loss-coef", type=float, default=0.01)
    ap.add_argument("--z-loss-coef", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-min", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--schedule-steps", type=int, default=6)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-jitter", type=float, default=0.0,
                    help="relative per-element gradient noise (emulates a less accurate fp32 implementation)")
    return ap.parse_args(argv)


def config_from_args(a):
    routers = [r for item in a.router for r in item.split(",") if r]
    return {
        "vocab_size": a.vocab_size, "seq_len": a.seq_len, "d_model": a.d_model, "n_heads": a.n_heads,
        "n_layers": a.n_layers, "d_ff": a.d_ff, "n_experts": a.n_experts, "top_k": a.top_k,
        "moe_every": a.moe_every, "routers": routers, "capacity_factor": a.capacity_factor,
        "similarity_tau": a.similarity_tau, "similarity_causal": not a.non_causal,
        "aux_loss_coef": a.aux_loss_coef, "z_loss_coef": a.z_loss_coef, "ln_eps": 1e-5,
        "lr": a.lr, "lr_min": a.lr_min, "warmup": a.warmup, "steps": a.schedule_steps,
        "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": a.weight_decay, "grad_clip": a.grad_clip,
    }


def main(argv=None):
    a = parse_args(argv)
    try:
        d = make_dump(config_from_args(a), a.batch, a.train_steps, a.seed, grad_jitter=a.grad_jitter)
    except ValueError as e:
        print(f"make_synthetic_dump: {e}", file=sys.stderr)
        return 2
    write_dump(a.out, d)
    print(f"wrote {a.out} (routers {d['config']['routers']}, {a.train_steps} train steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
