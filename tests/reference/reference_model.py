"""Independent PyTorch reference of the routemoe model (docs/model.md).

Written from the specification only, to verify the C++ framework. Clarity over speed: experts
are a Python loop over index-selected rows, routers are written equation by equation.

Everything is functional: parameters live in an ordered dict ``name -> leaf tensor`` whose names
are exactly the HDF5 names of docs/model.md, so a dump can be loaded without any renaming.
The model runs in whatever floating dtype the parameters have (float32 or float64).

Run with Debian's python (/usr/bin/python3): torch 1.13, numpy.
"""

import json
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

ROUTERS = ("topk", "similarity", "attention", "ac")

# Defaults of docs/model.md ([model]) and of the optimiser keys of the dump's `config`.
DEFAULTS = {
    "vocab_size": 256,
    "seq_len": 128,
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "d_ff": 256,
    "n_experts": 4,
    "top_k": 2,
    "moe_every": 1,
    "routers": ["topk"],
    "capacity_factor": 0.0,
    "similarity_tau": 1.0,
    "similarity_causal": True,
    "aux_loss_coef": 0.01,
    "z_loss_coef": 0.0,
    "ln_eps": 1e-5,
    # router options (docs/model.md): Switch coefficient per router (< 0: aux_loss_coef), the AC
    # fixed norm (0: off), the graph routers' mixing (what is mixed, self-weight alpha)
    "aux_loss_coef_topk": -1.0,
    "aux_loss_coef_similarity": -1.0,
    "aux_loss_coef_attention": -1.0,
    "aux_loss_coef_ac": -1.0,
    "ac_fixed_norm": 0.0,
    "graph_mix": "probs",
    "graph_self_weight": 0.0,
    # optimiser
    "lr": 1e-3,
    "lr_min": 0.0,
    "warmup": 0,
    "steps": 1,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
}

AC_EPS = 1e-4        # w_e = 1 / (MAD_e + 1e-4)
AC_CLIP = 10.0       # clip every entry to at most 10 x the mean of all entries
AC_EMB_GAIN = 0.32   # orthogonal init gain of expert_emb


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
class Config:
    """Attribute access over the config dict, with defaults filled in and the router list
    expanded to one entry per MoE layer."""

    def __init__(self, d):
        cfg = dict(DEFAULTS)
        cfg.update(d)
        self.__dict__.update(cfg)
        if self.d_model % self.n_heads != 0:
            raise ValueError("d_model must be divisible by n_heads")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("top_k must be in [1, n_experts]")
        if self.moe_every < 1:
            raise ValueError("moe_every must be >= 1")
        n_moe = len(self.moe_blocks())
        routers = list(self.routers) if not isinstance(self.routers, str) else [self.routers]
        if len(routers) == 1:
            routers = routers * n_moe
        if len(routers) != n_moe:
            raise ValueError(f"routers has {len(routers)} entries, model has {n_moe} MoE layers")
        for r in routers:
            if r not in ROUTERS:
                raise ValueError(f"unknown router {r!r}")
        self.routers = routers
        if self.graph_mix not in ("probs", "logits"):
            raise ValueError(f"graph_mix must be probs or logits, got {self.graph_mix!r}")
        if not 0.0 <= self.graph_self_weight <= 1.0:
            raise ValueError("graph_self_weight must lie in [0, 1]")
        if self.ac_fixed_norm < 0:
            raise ValueError("ac_fixed_norm must be >= 0")

    def moe_blocks(self):
        """Block l (0-based) is an MoE block iff l % moe_every == moe_every - 1."""
        return [l for l in range(self.n_layers) if l % self.moe_every == self.moe_every - 1]

    def is_moe(self, l):
        return l % self.moe_every == self.moe_every - 1

    def effective_router(self, m):
        """Router actually used by MoE layer m: `ac` on the first MoE layer falls back to `topk`
        (there is no previous assignment)."""
        r = self.routers[m]
        return "topk" if (r == "ac" and m == 0) else r

    def aux_coef(self, m):
        """Switch-loss coefficient of MoE layer m: aux_loss_coef_<router it really uses> when that
        is >= 0, else aux_loss_coef."""
        own = getattr(self, "aux_loss_coef_" + self.effective_router(m))
        return own if own >= 0 else self.aux_loss_coef

    def to_dict(self):
        return {k: getattr(self, k) for k in DEFAULTS}

    def to_json(self):
        return json.dumps(self.to_dict())


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
def param_specs(cfg):
    """[(name, shape, init)] in the order of the table of docs/model.md.
    init is ("normal", std) | ("ones",) | ("zeros",) | ("orthogonal", gain)."""
    V, T, d, dff, E, L = cfg.vocab_size, cfg.seq_len, cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_layers
    proj_std = 0.02 / math.sqrt(2 * L)
    specs = [("wte", (V, d), ("normal", 0.02)), ("wpe", (T, d), ("normal", 0.01))]
    m = 0
    for l in range(L):
        p = f"blocks.{l}."
        specs += [
            (p + "ln1.weight", (d,), ("ones",)),
            (p + "ln1.bias", (d,), ("zeros",)),
            (p + "attn.qkv.weight", (3 * d, d), ("normal", 0.02)),
            (p + "attn.qkv.bias", (3 * d,), ("zeros",)),
            (p + "attn.proj.weight", (d, d), ("normal", proj_std)),
            (p + "attn.proj.bias", (d,), ("zeros",)),
            (p + "ln2.weight", (d,), ("ones",)),
            (p + "ln2.bias", (d,), ("zeros",)),
        ]
        if not cfg.is_moe(l):
            specs += [
                (p + "mlp.fc.weight", (dff, d), ("normal", 0.02)),
                (p + "mlp.fc.bias", (dff,), ("zeros",)),
                (p + "mlp.proj.weight", (d, dff), ("normal", proj_std)),
                (p + "mlp.proj.bias", (d,), ("zeros",)),
            ]
        else:
            if cfg.effective_router(m) == "ac":
                specs.append((p + "moe.expert_emb", (E, d), ("orthogonal", AC_EMB_GAIN)))
            else:
                specs.append((p + "moe.gate.weight", (E, d), ("normal", 0.02)))
            specs += [
                (p + "moe.experts.fc.weight", (E, dff, d), ("normal", 0.02)),
                (p + "moe.experts.fc.bias", (E, dff), ("zeros",)),
                (p + "moe.experts.proj.weight", (E, d, dff), ("normal", proj_std)),
                (p + "moe.experts.proj.bias", (E, d), ("zeros",)),
            ]
            m += 1
    specs += [("ln_f.weight", (d,), ("ones",)), ("ln_f.bias", (d,), ("zeros",))]
    return specs


def init_params(cfg, seed=0, dtype=torch.float32, bias_std=0.0):
    """Random initialisation with the distributions of docs/model.md (torch's generator, not the
    framework's Philox streams: bit-equality with the C++ init is not a goal of the reference).
    bias_std > 0 perturbs the 1/0 LayerNorm and zero-bias inits (self-tests use it so that every
    gradient path is exercised with generic values)."""
    g = torch.Generator().manual_seed(seed)
    params = OrderedDict()
    for name, shape, init in param_specs(cfg):
        if init[0] == "normal":
            t = torch.randn(shape, generator=g, dtype=torch.float64) * init[1]
        elif init[0] == "ones":
            t = torch.ones(shape, dtype=torch.float64) + bias_std * torch.randn(shape, generator=g, dtype=torch.float64)
        elif init[0] == "zeros":
            t = bias_std * torch.randn(shape, generator=g, dtype=torch.float64)
        elif init[0] == "orthogonal":
            # orthogonal rows (E <= d) or columns (E > d), scaled by the gain
            a = torch.randn(shape, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(a.T if shape[0] <= shape[1] else a)
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
            t = (q.T if shape[0] <= shape[1] else q) * init[1]
        else:
            raise ValueError(init)
        params[name] = t.to(dtype).requires_grad_(True)
    return params


def no_weight_decay(name, cfg=None):
    """No decay on parameters whose name ends in `bias` or that belong to a LayerNorm, nor on the
    AC expert embeddings when they have a fixed norm (cfg.ac_fixed_norm > 0)."""
    parts = name.split(".")
    if cfg is not None and cfg.ac_fixed_norm > 0 and name.endswith("moe.expert_emb"):
        return True
    return name.endswith("bias") or any(p in ("ln1", "ln2", "ln_f") for p in parts)


def param_groups(params, cfg):
    """Two AdamW parameter groups: decay (weight_decay from config) and no decay (0)."""
    decay = [t for n, t in params.items() if not no_weight_decay(n, cfg)]
    nodecay = [t for n, t in params.items() if no_weight_decay(n, cfg)]
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": nodecay, "weight_decay": 0.0},
    ]


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def layer_norm(x, w, b, eps):
    """(x - mean) / sqrt(var + eps) * w + b, biased variance, over the last dim."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def causal_attention(h, P, pre, n_heads):
    """Causal multi-head self-attention.  h: [B,T,d].  Returns (out [B,T,d], Abar [B,T,T]) with
    Abar the head-averaged attention probabilities (kept in the graph for the `attention` router).
        q,k,v = split(h Wqkv^T + bqkv);  P = softmax(q k^T/sqrt(dh) + mask);  out = merge(P v) Wp^T + bp
    """
    B, T, d = h.shape
    H = n_heads
    dh = d // H
    qkv = h @ P[pre + "attn.qkv.weight"].T + P[pre + "attn.qkv.bias"]          # [B,T,3d]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    # head hh uses columns [hh*dh, (hh+1)*dh) of each of q, k, v
    q = q.reshape(B, T, H, dh).transpose(1, 2)                                 # [B,H,T,dh]
    k = k.reshape(B, T, H, dh).transpose(1, 2)
    v = v.reshape(B, T, H, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)                           # [B,H,T,T]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)                          # j > i
    scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = (probs @ v).transpose(1, 2).reshape(B, T, d)                           # merge heads
    out = o @ P[pre + "attn.proj.weight"].T + P[pre + "attn.proj.bias"]
    return out, probs.mean(dim=1)


def dense_ffn(u, P, pre):
    """FC2(GELU(FC1(u)))."""
    h = gelu_tanh(u @ P[pre + "mlp.fc.weight"].T + P[pre + "mlp.fc.bias"])
    return h @ P[pre + "mlp.proj.weight"].T + P[pre + "mlp.proj.bias"]


def topk_desc(sel, k):
    """Indices of the k largest entries per row, in decreasing order; ties go to the lower
    expert index (a stable descending sort keeps equal entries in index order)."""
    _, idx = torch.sort(sel, dim=-1, descending=True, stable=True)
    return idx[:, :k]


def selection_margin(sel, k):
    """Smallest gap between consecutive sorted entries among the first min(k+1, E) of each row:
    below it, rounding can change the chosen set or its order.  [N], +inf when k = E = 1."""
    s, _ = torch.sort(sel, dim=-1, descending=True, stable=True)
    n = min(k + 1, sel.shape[1])
    if n < 2:
        return torch.full((sel.shape[0],), float("inf"), dtype=sel.dtype)
    return (s[:, : n - 1] - s[:, 1:n]).min(dim=1).values


def capacity_keep(chosen, n_experts, capacity_factor):
    """Which slots (i, j) are admitted.  C <= 0: all (dropless).  C > 0: each expert takes at most
    c = ceil(C*N*k/E) slots, admitted in priority order: all first choices in token order, then
    all second choices in token order, ...; a slot whose expert is full is dropped."""
    N, k = chosen.shape
    if capacity_factor <= 0:
        return torch.ones(N, k, dtype=torch.bool)
    cap = math.ceil(capacity_factor * N * k / n_experts)   # computed in double precision
    keep = torch.zeros(N, k, dtype=torch.bool)
    admitted = torch.zeros(n_experts, dtype=torch.long)
    for j in range(k):                                     # k-major priority
        onehot = F.one_hot(chosen[:, j], n_experts)        # [N,E]
        rank = onehot.cumsum(0)                            # 1-based rank of token i at its expert
        pos = (admitted.unsqueeze(0) + rank)[torch.arange(N), chosen[:, j]]
        keep[:, j] = pos <= cap
        admitted = torch.clamp(admitted + onehot.sum(0), max=cap)
    return keep


def ac_feature_weights(u, c_prev, n_experts):
    """AC router feature scaling M [N,d] (a constant: computed from u.detach()).
    For each expert e with n_e > 0 tokens (c_i = e):
        mu_e = mean u_i, MAD_e = mean |u_i - mu_e| (per feature), w_e = 1/(MAD_e + 1e-4)
        m = mean of all w_{e,f} over present e and all f;  w <- min(w, 10 m)
        w_{e,f} <- w_{e,f} / mean_{present e'} w_{e',f};   M_i = w_{c_i}
    """
    u = u.detach()
    N, d = u.shape
    onehot = F.one_hot(c_prev, n_experts).to(u.dtype)                    # [N,E]
    n_e = onehot.sum(0)                                                  # [E]
    present = n_e > 0
    safe_n = torch.clamp(n_e, min=1).unsqueeze(1)
    mu = onehot.T @ u / safe_n                                           # [E,d]
    mad = onehot.T @ (u - mu[c_prev]).abs() / safe_n                     # [E,d]
    w = 1.0 / (mad + AC_EPS)
    wp = w[present]                                                      # present experts only
    m = wp.mean()
    wp = torch.clamp(wp, max=AC_CLIP * m)
    wp = wp / wp.mean(dim=0, keepdim=True)
    w = torch.zeros_like(w)
    w[present] = wp
    return w[c_prev]                                                     # rows of absent experts are never used


# ----------------------------------------------------------------------------------------------
# MoE layer
# ----------------------------------------------------------------------------------------------
def moe_layer(u, P, pre, cfg, router, Abar, c_prev, B, T, forced=None):
    """MoE(u) for u [N,d] (rows in (b,t) order).  Returns (y [N,d], info dict).

    Router -> selection vector sel [N,E], routing probabilities r [N,E] (Switch loss), logits z
    for the z-loss, top-k (or the forced choice), gates g [N,k], capacity, expert loop, combine
        MoE(u)_i = sum_j g_ij Expert_{e_ij}(u_i) over kept slots.
    """
    N, d = u.shape
    E, k = cfg.n_experts, cfg.top_k

    if router == "ac":
        # s_ij = (u_i (.) M_i) . e_j/||e_j||,  M constant
        M = ac_feature_weights(u, c_prev, E)
        emb = P[pre + "moe.expert_emb"]
        if cfg.ac_fixed_norm > 0:
            # the parameter itself is put back on the sphere of radius r before the scores, outside
            # autograd (so the gradient is the one of e/||e|| at ||e|| = r)
            with torch.no_grad():
                emb.div_(emb.norm(dim=1, keepdim=True)).mul_(cfg.ac_fixed_norm)
        emb_n = emb / emb.norm(dim=1, keepdim=True)
        s = (u * M) @ emb_n.T                                            # [N,E]
        sel, z = s, s
        r = torch.softmax(s, dim=-1)
    else:
        z = u @ P[pre + "moe.gate.weight"].T                             # logits [N,E]
        p = torch.softmax(z, dim=-1)
        if router == "topk":
            sel = p
        else:
            if router == "similarity":
                # S_ij = softmax_j (u_i.u_j)/(tau sqrt(d)) within the sequence (j <= i if causal)
                ub = u.reshape(B, T, d)
                a = ub @ ub.transpose(1, 2) / (cfg.similarity_tau * math.sqrt(d))   # [B,T,T]
                if cfg.similarity_causal:
                    a = a.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
                A = torch.softmax(a, dim=-1)
            elif router == "attention":
                A = Abar
            else:
                raise ValueError(router)
            # mixing matrix alpha I + (1 - alpha) A applied to p (p~ = A' p, the papers' form with
            # alpha = 0) or to the logits (p~ = softmax(A' z))
            alpha = cfg.graph_self_weight
            x = z if cfg.graph_mix == "logits" else p
            mixed = (1.0 - alpha) * (A @ x.reshape(B, T, E)).reshape(N, E) + alpha * x
            sel = torch.softmax(mixed, dim=-1) if cfg.graph_mix == "logits" else mixed
        r = sel

    own = topk_desc(sel.detach(), k)                                     # the reference's own choice
    chosen = own if forced is None else forced.to(torch.long)
    picked = sel.gather(1, chosen)                                       # [N,k]
    if router == "ac":
        g = torch.softmax(picked, dim=-1)                                # softmax over the k chosen scores
    else:
        g = picked / picked.sum(dim=-1, keepdim=True)                    # renormalised probabilities

    keep = capacity_keep(chosen, E, cfg.capacity_factor)

    # experts: loop over experts on index-selected rows; experts always receive the unscaled u
    W1, b1 = P[pre + "moe.experts.fc.weight"], P[pre + "moe.experts.fc.bias"]
    W2, b2 = P[pre + "moe.experts.proj.weight"], P[pre + "moe.experts.proj.bias"]
    tok = torch.arange(N).repeat_interleave(k)                           # slot (i,j) -> token i
    slot_e, slot_keep, slot_g = chosen.reshape(-1), keep.reshape(-1), g.reshape(-1)
    y = torch.zeros_like(u)
    for e in range(E):
        slots = ((slot_e == e) & slot_keep).nonzero().squeeze(1)
        if slots.numel() == 0:
            continue
        rows = tok[slots]
        h = gelu_tanh(u[rows] @ W1[e].T + b1[e])
        out = h @ W2[e].T + b2[e]
        y = y.index_add(0, rows, slot_g[slots].unsqueeze(1) * out)

    # Switch loss E * sum_e f_e P_e: f_e from the first chosen expert (no gradient, before drops)
    f = torch.bincount(chosen[:, 0], minlength=E).to(u.dtype) / N
    switch = E * (f * r.mean(dim=0)).sum()
    # router z-loss (1/N) sum_i logsumexp(z_i)^2
    zloss = (torch.logsumexp(z, dim=-1) ** 2).mean()

    info = {
        "router": router,
        "experts": chosen.detach().clone(),        # experts used (forced or own)
        "own_experts": own,                         # top-k of the reference's selection vector
        "gates": g.detach().clone(),
        "keep": keep,
        "sel": sel.detach().clone(),
        "margin": selection_margin(sel.detach(), k),
        "switch": switch,
        "zloss": zloss,
    }
    return y, info


# ----------------------------------------------------------------------------------------------
# full model
# ----------------------------------------------------------------------------------------------
def forward(P, cfg, inputs, targets, forced_routing=None):
    """One forward pass.  P: name -> tensor (all one dtype).  inputs/targets: [B,T] integer,
    targets -1 = ignored.  forced_routing: optional list (one [N,k] per MoE layer) of expert choices
    to use instead of the reference's own top-k (parity checks force the dump's choice so that a
    near-tie decided the other way does not derail the comparison; the own choice is still
    recorded).  Returns dict(logits, loss, ce_loss, aux_loss, routing=[info per MoE layer])."""
    inputs = torch.as_tensor(inputs).long()
    targets = torch.as_tensor(targets).long()
    B, T = inputs.shape
    N = B * T
    x = P["wte"][inputs] + P["wpe"][:T]                                  # [B,T,d]
    routing = []
    c_prev = None                                                        # top-1 of the previous MoE layer
    m = 0
    for l in range(cfg.n_layers):
        pre = f"blocks.{l}."
        h = layer_norm(x, P[pre + "ln1.weight"], P[pre + "ln1.bias"], cfg.ln_eps)
        a, Abar = causal_attention(h, P, pre, cfg.n_heads)
        x = x + a
        u = layer_norm(x, P[pre + "ln2.weight"], P[pre + "ln2.bias"], cfg.ln_eps).reshape(N, -1)
        if cfg.is_moe(l):
            forced = None if forced_routing is None else torch.as_tensor(forced_routing[m])
            y, info = moe_layer(u, P, pre, cfg, cfg.effective_router(m), Abar, c_prev, B, T, forced)
            c_prev = info["experts"][:, 0]                               # its first chosen expert
            routing.append(info)
            m += 1
        else:
            y = dense_ffn(u, P, pre)
        x = x + y.reshape(B, T, -1)
    xf = layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], cfg.ln_eps)
    logits = xf @ P["wte"].T                                             # tied LM head

    # mean cross-entropy over non-ignored targets (0 if every target is ignored)
    V = logits.shape[-1]
    n_valid = int((targets != -1).sum())
    ce_sum = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1, reduction="sum")
    ce = ce_sum / max(n_valid, 1)
    aux = logits.new_zeros(())
    for m, info in enumerate(routing):
        aux = aux + cfg.aux_coef(m) * info["switch"] + cfg.z_loss_coef * info["zloss"]
    loss = ce + aux
    return {"logits": logits, "loss": loss, "ce_loss": ce, "aux_loss": aux, "routing": routing}


def forward_backward(P, cfg, inputs, targets, forced_routing=None):
    """Forward + backward of `loss`; returns (out dict, grads dict name -> tensor)."""
    for t in P.values():
        t.grad = None
    out = forward(P, cfg, inputs, targets, forced_routing)
    out["loss"].backward()
    grads = OrderedDict((n, t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
                        for n, t in P.items())
    return out, grads


# ----------------------------------------------------------------------------------------------
# optimiser
# ----------------------------------------------------------------------------------------------
def lr_at(step, cfg):
    """Learning rate at 0-based step s: linear warmup lr (s+1)/warmup for s < warmup, then cosine
    from lr to lr_min over steps - warmup steps (held at lr_min afterwards)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    q = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(q, 1.0)))


def make_optimizer(P, cfg):
    """torch.optim.AdamW (decoupled decay p <- p - lr*lambda*p, bias-corrected moments, t from 1)."""
    return torch.optim.AdamW(param_groups(P, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, foreach=False)


def train_step(P, opt, cfg, step, inputs, targets, grad_jitter=0.0, generator=None):
    """One training step at 0-based `step`: forward/backward, clip by global norm
    (scale = min(1, clip/(G + 1e-6)), as torch.nn.utils.clip_grad_norm_), lr_at(step), AdamW.
    grad_jitter > 0 (tests only): multiply each gradient element by (1 + grad_jitter * N(0,1)).
    Returns (loss before the update, global grad norm before clipping, forward output)."""
    opt.zero_grad(set_to_none=True)
    out = forward(P, cfg, inputs, targets)
    out["loss"].backward()
    params = list(P.values())
    for t in params:            # parameters not reached by the graph get a zero gradient
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        if grad_jitter > 0:
            t.grad *= 1 + grad_jitter * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.dtype)
    gnorm = torch.sqrt(sum((t.grad.double() ** 2).sum() for t in params)).item()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    lr = lr_at(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return out["loss"].item(), gnorm, out


def clone_params(P, dtype):
    return OrderedDict((n, t.detach().to(dtype).clone().requires_grad_(True)) for n, t in P.items())
