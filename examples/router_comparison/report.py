"""The router-comparison report: report.md (tables of mean ± std over seeds and differences to
the baseline paired by seed), results.json (every number, strict JSON: no NaN or infinity) and
three hand-written SVG plots in svg/."""

import html
import json
import math
import os
import platform

import numpy as np

import analysis

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf"]


def machine():
    """One line describing this machine (CPU model, cores, OS)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        load = " load average %.1f %.1f %.1f at the end" % os.getloadavg()
    except OSError:
        load = ""
    return f"{cpu}, {cores} cores available, {platform.system()} {platform.release()},{load}"


def fmt(x, digits=4):
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def pm(entry, digits=4, delta=False):
    if delta:
        return f"{entry['delta_mean']:+.{digits}g} ± {fmt(entry['delta_std'], 2)}"
    return f"{fmt(entry['mean'], digits)} ± {fmt(entry['std'], 2)}"


# ---- SVG ----

def _svg(width, height, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Verdana, sans-serif" '
            f'font-size="12">\n<title>{html.escape(title)}</title>\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n' + "".join(body) + "</svg>\n")


def _ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_chart(series, title, xlabel, ylabel):
    """series: list of (label, colour, x, y, band or None). Bands are (lower, upper) arrays."""
    W, H, L, R, T, B = 720, 420, 70, 20, 40, 110
    xs = np.concatenate([np.asarray(s[2], float) for s in series])
    ys = [np.asarray(s[3], float) for s in series]
    ys += [np.asarray(b, float) for s in series if s[4] is not None for b in s[4]]
    ys = np.concatenate(ys)
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    pad = (y1 - y0) * 0.05 or 0.05
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x):
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return T + (y1 - y) / (y1 - y0) * (H - T - B)

    body = [f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>\n',
            f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>\n']
    for t in _ticks(x0, x1):
        body.append(f'<line x1="{px(t):.1f}" y1="{H - B}" x2="{px(t):.1f}" y2="{H - B + 4}" stroke="#444"/>'
                    f'<text x="{px(t):.1f}" y="{H - B + 17}" text-anchor="middle">{t:g}</text>\n')
    for t in _ticks(y0, y1):
        body.append(f'<line x1="{L - 4}" y1="{py(t):.1f}" x2="{W - R}" y2="{py(t):.1f}" stroke="#ddd"/>'
                    f'<text x="{L - 7}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>\n')
    body.append(f'<text x="{(L + W - R) / 2}" y="{H - B + 34}" text-anchor="middle">{html.escape(xlabel)}</text>\n')
    body.append(f'<text transform="translate(16,{(T + H - B) / 2}) rotate(-90)" text-anchor="middle">'
                f'{html.escape(ylabel)}</text>\n')
    for label, colour, x, y, band in series:
        if band is not None:
            pts = [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, band[1])]
            pts += [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x[::-1], band[0][::-1])]
            body.append(f'<polygon points="{" ".join(pts)}" fill="{colour}" fill-opacity="0.15" stroke="none"/>\n')
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2">'
                    f'<title>{html.escape(label)}</title></polyline>\n')
    # legend below the plot, three entries per row
    for i, (label, colour, *_rest) in enumerate(series):
        lx, ly = L + (i % 3) * 210, H - B + 56 + (i // 3) * 18
        body.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 22}" y2="{ly - 4}" stroke="{colour}" stroke-width="3"/>'
                    f'<text x="{lx + 28}" y="{ly}">{html.escape(label[:28])}</text>\n')
    return _svg(W, H, body, title)


def heat_maps(rows, n_experts, title):
    """rows: list of (label, shares [E]) drawn as one row of cells each (share 0 white, 1/E x 2
    and above full colour), the share written in each cell."""
    cw, ch, L, T = 70, 24, 260, 50
    W, H = max(L + cw * n_experts + 20, 620), T + ch * len(rows) + 40
    body = [f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>\n']
    for e in range(n_experts):
        body.append(f'<text x="{L + cw * e + cw / 2}" y="{T - 8}" text-anchor="middle">expert {e}</text>\n')
    full = 2.0 / n_experts
    for r, (label, shares) in enumerate(rows):
        y = T + ch * r
        body.append(f'<text x="{L - 8}" y="{y + ch / 2 + 4}" text-anchor="end">{html.escape(label[:36])}</text>\n')
        for e, s in enumerate(shares):
            a = min(float(s) / full, 1.0)
            body.append(f'<rect x="{L + cw * e}" y="{y}" width="{cw}" height="{ch}" fill="#08519c" '
                        f'fill-opacity="{a:.3f}" stroke="white"/><text x="{L + cw * e + cw / 2}" '
                        f'y="{y + ch / 2 + 4}" text-anchor="middle" fill="{"white" if a > 0.6 else "black"}">'
                        f'{float(s):.3f}</text>\n')
    body.append(f'<text x="10" y="{H - 12}">share of probe tokens whose first choice is the expert, '
                f'mean over seeds; uniform = {1.0 / n_experts:.3f}</text>\n')
    return _svg(W, H, body, title)


# ---- the report ----

def _by_variant(runs, variants):
    return {v: [r for r in runs if r["variant"] == v] for v in variants}


def plots(out, runs, meta):
    os.makedirs(os.path.join(out, "svg"), exist_ok=True)
    variants = meta["variants"]
    byv = _by_variant(runs, variants)
    series = []
    for i, v in enumerate(variants):
        steps, mean, std = analysis.curve_band([(r["val_steps"], r["val_losses"]) for r in byv[v]])
        series.append((v, COLOURS[i % len(COLOURS)], steps, mean, (mean - std, mean + std)))
    files = {}
    files["validation.svg"] = line_chart(
        series, f"Validation loss (mean ± std over {len(meta['seeds'])} seeds)", "step",
        "validation loss (nats/byte)")
    series = []
    for i, v in enumerate(variants):
        curves = [(r["flip_steps"], np.mean(r["flip_top1"], axis=1)) for r in byv[v]]
        steps, mean, std = analysis.curve_band(curves)
        series.append((v, COLOURS[i % len(COLOURS)], steps, mean, (mean - std, mean + std)))
    files["flip_rate.svg"] = line_chart(
        series, "Top-1 flip rate between consecutive routing records (mean over layers, ± std over seeds)",
        "step of the later record", "share of probe tokens")
    rows = []
    for v in variants:
        counts = np.mean([np.asarray(r["load_counts"], float) for r in byv[v]], axis=0)
        routers = byv[v][0]["layer_routers"]
        for m, c in enumerate(counts):
            rows.append((f"{v} layer {m} ({routers[m]})", c / c.sum()))
    files["expert_load.svg"] = heat_maps(rows, len(rows[0][1]), "Expert load at the last record")
    for name, text in files.items():
        with open(os.path.join(out, "svg", name), "w", encoding="utf-8") as f:
            f.write(text)
    return list(files)


METRICS = [  # key, heading, digits
    ("test_bpb", "clean test bits/byte", 4),
    ("steps_to_target", "steps to topk's final val loss", 4),
]
LAYER_METRICS = [
    ("late_top1", "top-1 flip rate, last 25%"),
    ("late_topk", "top-k change rate, last 25%"),
    ("late_last_change", "share of tokens last changed in the final 20%"),
    ("load_entropy", "load entropy H / log E (last record)"),
]


def write(out, runs, meta, baseline):
    variants = meta["variants"]
    runs = analysis.add_steps_to_target(runs, baseline)
    keys = ["test_bpb"] + [f"{c}_bpb" for c in meta["corrupted"]] + ["steps_to_target"]
    table = analysis.aggregate(runs, variants, baseline, keys, [k for k, _ in LAYER_METRICS])
    byv = _by_variant(runs, variants)
    reached = {v: sum(r["reached"] for r in byv[v]) for v in variants}
    svgs = plots(out, runs, meta)
    n = len(meta["seeds"])
    cfg = meta["config"]
    md = [f"# Router comparison ({meta['size']})", "",
          f"- Command: `{meta['command']}`",
          f"- Machine: {meta['machine']}",
          f"- Wall time of the invocation that wrote this report: {meta['wall_seconds'] / 60:.1f} min",
          f"- Data: {meta['data_note']}; corrupted test sets: "
          + ", ".join(f"{c} (`{meta['data'][c]}`)" for c in meta["corrupted"]),
          f"- Model: {json.dumps(cfg['model'])}, training {json.dumps(cfg['train'])}, "
          f"optimiser {json.dumps(cfg['optim'])}, records {json.dumps(cfg['checkpoint'])}; "
          "1 rank; data order train.seed = 1 for every run",
          f"- Seeds (model.seed): {', '.join(map(str, meta['seeds']))}; every number is mean ± "
          f"sample std (n - 1) over the {n} seeds; Δ is the difference to `{baseline}` paired by "
          "seed (mean ± std of the per-seed differences)", ""]
    md += ["## Test bits per byte and convergence", ""]
    head = ["variant", "routers"] + ["clean test bpb"] + [f"{c} bpb" for c in meta["corrupted"]]
    head += [f"Δ {h} vs {baseline}" for h in head[2:]] + ["steps to target", "reached"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        t = table[v]
        cells = [v, ",".join(byv[v][0]["routers"])] + [pm(t[k]) for k in keys[:-1]]
        cells += [pm(t[k], delta=True) for k in keys[:-1]]
        cells += [pm(t["steps_to_target"]), f"{reached[v]}/{len(byv[v])}"]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Corruption penalty (corrupted minus clean bits/byte of the same run), mean ± std:", "",
           "| variant | " + " | ".join(meta["corrupted"]) + " |", "|---|" + "---|" * len(meta["corrupted"])]
    penalty = {}
    for v in variants:
        cells = []
        for c in meta["corrupted"]:
            mean, std = analysis.mean_std([r[f"{c}_bpb"] - r["test_bpb"] for r in byv[v]])
            penalty.setdefault(v, {})[c] = {"mean": mean, "std": std}
            cells.append(f"{fmt(mean)} ± {fmt(std, 2)}")
        md.append(f"| {v} | " + " | ".join(cells) + " |")
    md += ["", f"Steps to target: the first validation step (every {cfg['train']['eval_every']} "
           f"steps) whose loss is at or below the final validation loss of `{baseline}` with the "
           "same seed; a run that never gets there counts with its last step and not in `reached`.", ""]
    md += ["## Routing fluctuation and load, per MoE layer", ""]
    n_layers = len(byv[variants[0]][0]["late_top1"])
    head = ["variant", "layer"] + [h for _, h in LAYER_METRICS] + [f"Δ flip vs {baseline}"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        for m in range(n_layers):
            t = table[v]
            cells = [v, f"{m} ({byv[v][0]['layer_routers'][m]})"]
            cells += [pm(t[f"{k}[{m}]"]) for k, _ in LAYER_METRICS]
            cells.append(pm(t[f"late_top1[{m}]"], delta=True))
            md.append("| " + " | ".join(cells) + " |")
    cl = analysis.claims(runs, variants, baseline, meta["corrupted"])
    md += ["", "## The papers' claims, paired by seed", "",
           f"Each row: the variant's number minus `{baseline}`'s for the same seed, mean ± std over "
           "seeds, and in how many seeds the difference is negative (the claim's direction).", "",
           "| claim | variant | Δ (mean ± std) | seeds in the claimed direction |", "|---|---|---|---|"]
    heads = {"fluctuation": "lower late top-1 flip rate (layers it routes)",
             "convergence": f"fewer steps to {baseline}'s final val loss",
             "robustness": "smaller corruption penalty (bits/byte)"}
    for kind, rows in cl.items():
        for v, c in rows.items():
            md.append(f"| {heads[kind]} | {v} | {c['mean']:+.4g} ± {fmt(c['std'], 2)} | "
                      f"{c['lower']}/{c['n']} |")
    recs = byv[variants[0]][0]
    md += ["", f"From the routing trace ({recs['records']} records of {recs['probe_tokens']} probe "
           "tokens per run; definitions in docs/analysis.md and docs/results.md).", "",
           "## Plots", ""] + [f"![{s}](svg/{s})" for s in svgs] + [""]
    md += ["## Per run", "", "| variant | seed | clean bpb | " + " | ".join(f"{c} bpb" for c in meta["corrupted"])
           + " | final val loss | steps to target | top-1 flip, last 25% (per layer) |",
           "|---|---|---|" + "---|" * len(meta["corrupted"]) + "---|---|---|"]
    for r in runs:
        md.append(f"| {r['variant']} | {r['seed']} | {fmt(r['test_bpb'])} | "
                  + " | ".join(fmt(r[f"{c}_bpb"]) for c in meta["corrupted"])
                  + f" | {fmt(r['val_losses'][-1])} | {r['steps_to_target']}{'' if r['reached'] else ' (not reached)'}"
                  + f" | {', '.join(fmt(x, 3) for x in r['late_top1'])} |")
    md.append("")
    results = {"meta": meta, "baseline": baseline, "table": table, "reached": reached,
               "corruption_penalty": penalty, "claims": cl, "runs": runs}
    # allow_nan=False: a non-finite number anywhere is an error, not a silent NaN in the report
    text = json.dumps(results, indent=1, allow_nan=False, default=float)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return results
