#!/usr/bin/env python3
"""The router-comparison experiment of issue 11 in one command (docs/results.md).

    examples/router_comparison/run.sh [--size quick|small|full] [--quick] [--out DIR]
                                      [--data DIR] [--routemoe BIN] [--seeds N] [--jobs N]

Trains the same model with every router variant (topk, similarity at a few temperatures,
attention, ac in the authors' layout) for several seeds with the same data order and rank
count, evaluates each final checkpoint on the clean and corrupted test splits, and writes
OUT/report.md, OUT/results.json and OUT/svg/*.svg. Progress with an ETA goes to stdout.
Running the same command again resumes: finished runs and evaluations are skipped, a run that
was interrupted continues from its newest checkpoint (`--resume auto`). `--jobs N` runs N
trainings at a time (each one process with --threads threads).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, HERE)

import analysis  # noqa: E402
import report  # noqa: E402

BASELINE = "topk"

# The model and schedule of each size. Every variant of a size trains exactly this, on one
# process (1 rank, 1 thread unless --threads), with the seeds 1..seeds as model.seed and
# the same data order (train.seed = 1).
SIZES = {
    # CI: a tiny model on the shipped text, a routing record every 4 steps so that the last
    # 25% of training holds several pairs of records. Seconds per run.
    "quick": dict(
        model=dict(seq_len=32, d_model=32, n_heads=2, n_layers=2, d_ff=64, n_experts=4,
                   top_k=2),
        train=dict(steps=60, batch_size=4, eval_every=10, eval_batches=4),
        optim=dict(lr=3e-3, lr_min=3e-4, warmup=6),
        checkpoint=dict(every=20, record_every=4, probe_tokens=512),
        taus=[1.0], seeds=2, corpus="shipped", corruptions=["wordswap"], test_batches=8,
        graph_readings=False),
    # The size run for docs/results.md on the shared 2-core machine (18 runs, 16 min there
    # with 1 thread at a load of ~12).
    "small": dict(
        model=dict(seq_len=64, d_model=64, n_heads=4, n_layers=2, d_ff=128, n_experts=4,
                   top_k=2),
        train=dict(steps=800, batch_size=8, eval_every=40, eval_batches=8),
        optim=dict(lr=2e-3, lr_min=2e-4, warmup=50),
        checkpoint=dict(every=200, record_every=20, probe_tokens=2048),
        taus=[0.5, 1.0, 2.0], seeds=3, corpus="real", corruptions=["wordswap", "charnoise"],
        test_batches=100, graph_readings=True),
    # The quickstart's model (4 MoE layers: ac = topk, ac, ac, ac) for 1000 steps, 18 runs;
    # sized from the step time measured with 1 thread to take about 1.5 to 2 hours on 2 idle
    # cores (not run to the end yet: docs/results.md).
    "full": dict(
        model=dict(seq_len=128, d_model=128, n_heads=4, n_layers=4, d_ff=256, n_experts=4,
                   top_k=2),
        train=dict(steps=1000, batch_size=8, eval_every=50, eval_batches=8),
        optim=dict(lr=2e-3, lr_min=2e-4, warmup=60),
        checkpoint=dict(every=250, record_every=20, probe_tokens=2048),
        taus=[0.5, 1.0, 2.0], seeds=3, corpus="real", corruptions=["wordswap", "charnoise"],
        test_batches=0, graph_readings=True),
}


def variants(size):
    """(name, routers, extra overrides) of every router variant: plain routers on every MoE
    layer, ac in the authors' layout (topk on the first MoE layer, ac after), and, where the
    size asks for them, the two readings of the graph-of-tokens paper that its abstract leaves
    open, for `attention` (docs/model.md, "Graph mixing"): mixing the gate logits instead of
    the probabilities, and a self-weight of 0.5."""
    n_moe = size["model"]["n_layers"]
    out = [("topk", ["topk"], {})]
    for tau in size["taus"]:
        out.append((f"similarity-tau{tau:g}", ["similarity"], {"model.similarity_tau": tau}))
    out.append(("attention", ["attention"], {}))
    if size.get("graph_readings"):
        out.append(("attention-logits", ["attention"], {"model.graph_mix": "logits"}))
        out.append(("attention-self0.5", ["attention"], {"model.graph_self_weight": 0.5}))
    out.append(("ac", ["topk"] + ["ac"] * (n_moe - 1), {}))
    return out


def log(msg):
    print(msg, flush=True)


def sh(cmd, logfile=None):
    """Runs a command; its output goes to logfile (appended) or through. Raises on failure."""
    if logfile:
        with open(logfile, "a", encoding="utf-8") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    else:
        rc = subprocess.call(cmd)
    if rc != 0:
        tail = ""
        if logfile:
            with open(logfile, encoding="utf-8", errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
        raise SystemExit(f"router_comparison: command failed ({rc}): {' '.join(cmd)}\n{tail}")


# ---- data ----

def prepare_data(args, size, out):
    """The clean and corrupted data directories: {"test": dir, "wordswap": dir, ...} and a note
    on where the text came from."""
    seq, batch = size["model"]["seq_len"], size["train"]["batch_size"]
    probe = size["checkpoint"]["probe_tokens"]
    checks = ["--seq-len", str(seq), "--batch-size", str(batch), "--probe-tokens", str(probe)]
    base = None
    if args.data:
        base, note = args.data, f"prepared corpus `{args.data}` (given with --data)"
    elif size["corpus"] == "real":
        kjv = os.path.join(ROOT, "data", "kjv")
        if not os.path.exists(os.path.join(kjv, "meta.json")) and not args.no_download:
            log("router_comparison: fetching the King James Bible (examples/corpora/get-corpus.sh)")
            rc = subprocess.call([os.path.join(ROOT, "examples/corpora/get-corpus.sh"), "kjv",
                                  "--routemoe", args.routemoe, "--out", kjv], cwd=ROOT)
            if rc != 0:
                log("router_comparison: could not obtain the corpus; using the shipped text")
        if os.path.exists(os.path.join(kjv, "meta.json")):
            base = kjv
            note = ("the King James Bible (examples/corpora/get-corpus.sh kjv: 5% val, 5% test, "
                    "test = Colossians to Revelation)")
    if base is None:
        base = os.path.join(out, "data", "opticks")
        note = ("**the shipped text** (examples/data/opticks.txt, Newton's Opticks, 567 KB), "
                "not a real corpus: " + ("--quick always uses it" if size["corpus"] == "shipped"
                                         else "the King James Bible could not be obtained"))
        if not os.path.exists(os.path.join(base, "meta.json")):
            sh([args.routemoe, "prepare", os.path.join(ROOT, "examples/data/opticks.txt"),
                "--out", base, "--overwrite", "--val-fraction", "0.1", "--test-fraction", "0.05"]
               + checks, os.path.join(out, "prepare.log"))
    dirs = {"test": base}
    for name in size["corruptions"]:
        recipe = {"wordswap": "word-swap", "charnoise": "char-noise"}[name]
        d = base + "-" + name  # get-corpus.sh writes these next to the clean set
        if not os.path.exists(os.path.join(d, "meta.json")):
            d = os.path.join(out, "data", os.path.basename(base) + "-" + name)
        if not os.path.exists(os.path.join(d, "meta.json")):
            rate = ["--rate", "0.05"] if name == "charnoise" else []
            sh([args.routemoe, "prepare", "--corrupt", recipe, "--from", base, "--out", d,
                "--seed", "1", "--splits", "test", "--overwrite"] + rate,
               os.path.join(out, "prepare.log"))
        dirs[name] = d
    return dirs, note


# ---- runs ----

def train_cmd(args, size, name, routers, extra, seed, data, run_dir):
    cmd = [args.routemoe, "train", f"--train.out_dir={run_dir}", f"--data.path={data}",
           f"--model.routers={','.join(routers)}", f"--model.seed={seed}", "--train.seed=1",
           "--train.log_every=1000000", "--train.progress=false",
           f"--train.threads={args.threads}", "--checkpoint.keep_last=1"]
    for section in ("model", "train", "optim", "checkpoint"):
        for k, v in size[section].items():
            cmd.append(f"--{section}.{k}={v}")
    for k, v in extra.items():
        cmd.append(f"--{k}={v}")
    return cmd


def final_ckpt(run_dir, steps):
    return os.path.join(run_dir, "checkpoints", f"ckpt_{steps:08d}.h5")


def steps_done(run_dir):
    """The last training step metrics.jsonl holds (0 when none)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    last = 0
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line).get("step", 0)))
                except ValueError:
                    pass
    return last


class Progress:
    """Units done against units to do, with an ETA from the rate measured in this invocation.
    Thread-safe: runs in flight report their own units (update), finished ones add theirs
    (finish)."""

    def __init__(self, total_units, done_units):
        self.total, self.done, self.start_done = total_units, done_units, done_units
        self.active = {}
        self.lock = threading.Lock()
        self.t0 = time.time()
        self.last_print = 0.0

    def update(self, key, units):
        with self.lock:
            self.active[key] = units

    def finish(self, key, units):
        with self.lock:
            self.active.pop(key, None)
            self.done += units

    def show(self, what, force=False):
        with self.lock:
            now = time.time()
            if not force and now - self.last_print < 15:
                return
            self.last_print = now
            done = self.done + sum(self.active.values())
        rate = (done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        log(f"[{100.0 * done / self.total:5.1f}%] {what}  elapsed "
            f"{time.strftime('%H:%M:%S', time.gmtime(now - self.t0))}  ETA {eta_s}")


# The training processes running now, so that an interrupt can stop every one of them.
LIVE = set()
LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()


def stop_all():
    """Ctrl-C or SIGTERM: every running training gets a stop signal (it checkpoints, exits 75)."""
    STOPPING.set()
    with LIVE_LOCK:
        procs = list(LIVE)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait()


def train_run(args, cmd, run_dir, steps, progress, label):
    """Trains (or resumes) one run to its final checkpoint."""
    if os.path.exists(final_ckpt(run_dir, steps)):
        return
    ckpts = os.path.join(run_dir, "checkpoints")
    has_ckpt = os.path.isdir(ckpts) and any(n.endswith(".h5") for n in os.listdir(ckpts))
    if has_ckpt:
        log(f"{label}: resuming from its newest checkpoint (step {steps_done(run_dir)} logged)")
        cmd = cmd + ["--resume", "auto"]
    elif os.path.exists(run_dir):
        log(f"{label}: interrupted before its first checkpoint; starting it again")
        shutil.rmtree(run_dir)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    before = steps_done(run_dir)
    logfile = run_dir + ".log"
    with open(logfile, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        with LIVE_LOCK:
            if STOPPING.is_set():
                raise SystemExit("router_comparison: stopping")
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            LIVE.add(proc)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    progress.update(run_dir, steps_done(run_dir) - before)
                    progress.show(f"{label}: step {steps_done(run_dir)}/{steps}")
        finally:
            with LIVE_LOCK:
                LIVE.discard(proc)
    progress.update(run_dir, 0)
    if rc == 75:
        raise SystemExit(f"router_comparison: {label} was stopped (it wrote a checkpoint); "
                         "run the same command again to resume")
    if rc != 0 or not os.path.exists(final_ckpt(run_dir, steps)):
        with open(logfile, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        raise SystemExit(f"router_comparison: {label} failed ({rc}); log {logfile}:\n{tail}")


def eval_run(args, size, run_dir, steps, name, data, out_json, logfile):
    if os.path.exists(out_json):
        return
    tmp = out_json + ".tmp"
    batches = size["test_batches"]
    sh([args.routemoe, "eval", final_ckpt(run_dir, steps), "--split", "test", "--data", data,
        "--batches", str(batches) if batches else "all", "--threads", str(args.threads),
        "--json", tmp], logfile)
    os.replace(tmp, out_json)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --size quick (CI)")
    p.add_argument("--out", help="output directory (default runs/router_comparison-<size>)")
    p.add_argument("--data", help="a prepared, byte-tokenized directory with a test split "
                                  "(default: data/kjv, fetched when missing; quick: shipped text)")
    p.add_argument("--routemoe", default=os.path.join(ROOT, "build/release/routemoe"))
    p.add_argument("--seeds", type=int, help="seeds per variant (default: the size's)")
    p.add_argument("--threads", type=int, default=1, help="train.threads and eval --threads (default 1: "
                   "these small models ran up to 10x slower with 2 threads on a loaded machine)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at a time (default 1; "
                   "2 on 2 idle cores with --threads 1 halves the wall time)")
    p.add_argument("--no-download", action="store_true", help="never run get-corpus.sh")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be at least 1")
    # SIGTERM ends the experiment like Ctrl-C: the running trainings get a stop signal, write a
    # checkpoint, and the next invocation resumes them
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.quick:
        args.size = "quick"
    size = SIZES[args.size]
    seeds = list(range(1, (args.seeds or size["seeds"]) + 1))
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"router_comparison-{args.size}"))
    args.routemoe = os.path.abspath(args.routemoe)
    if not os.access(args.routemoe, os.X_OK):
        raise SystemExit(f"router_comparison: {args.routemoe} is not an executable routemoe "
                         "(build it, or --routemoe)")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    dirs, data_note = prepare_data(args, size, out)
    steps = size["train"]["steps"]
    vs = variants(size)
    plan = [(v, s) for v in vs for s in seeds]
    log(f"router_comparison: size {args.size}, {len(vs)} variants x {len(seeds)} seeds = "
        f"{len(plan)} runs of {steps} steps; data {dirs['test']}; output {out}")
    eval_units = max(1, steps // 20)  # an evaluation counted as a twentieth of a run
    per_run = steps + eval_units * len(dirs)
    done = 0
    for (name, _, _), seed in plan:
        run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
        done += steps if os.path.exists(final_ckpt(run_dir, steps)) else steps_done(run_dir)
        done += eval_units * sum(os.path.exists(os.path.join(out, "eval", f"{name}-s{seed}.{k}.json"))
                                 for k in dirs)
    progress = Progress(per_run * len(plan), done)
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)

    def one(i, name, routers, extra, seed):
        """Train one (variant, seed) and evaluate it on every test split."""
        label = f"run {i + 1}/{len(plan)} {name} seed {seed}"
        run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
        units = 0
        before = steps if os.path.exists(final_ckpt(run_dir, steps)) else steps_done(run_dir)
        cmd = train_cmd(args, size, name, routers, extra, seed, dirs["test"], run_dir)
        train_run(args, cmd, run_dir, steps, progress, label)
        progress.finish(run_dir, steps - before)
        units += steps - before
        for k, d in dirs.items():
            js = os.path.join(out, "eval", f"{name}-s{seed}.{k}.json")
            if not os.path.exists(js):
                eval_run(args, size, run_dir, steps, k, d, js, run_dir + ".log")
                progress.finish(run_dir, eval_units)
                units += eval_units
        if units > 0:
            progress.show(f"{label}: done", force=True)
        else:
            log(f"{label}: finished earlier, reused")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, i, name, routers, extra, seed)
                   for i, ((name, routers, extra), seed) in enumerate(plan)]
        try:
            pending = futures
            while pending:
                finished, pending = wait(pending, timeout=1, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    if fut.exception() is not None:
                        for other in pending:
                            other.cancel()
                        stop_all()
                        raise fut.exception()
        except KeyboardInterrupt:
            for other in futures:
                other.cancel()
            stop_all()
            raise
    runs = []
    for (name, routers, _), seed in plan:
        run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
        evals = {}
        for k in dirs:
            with open(os.path.join(out, "eval", f"{name}-s{seed}.{k}.json"), encoding="utf-8") as f:
                evals[k] = json.load(f)
        r = analysis.summarize_run_dir(run_dir, steps, evals)
        r.update(variant=name, seed=seed, routers=routers)
        runs.append(r)
    meta = dict(size=args.size, config=size, seeds=seeds, variants=[v[0] for v in vs],
                corrupted=[k for k in dirs if k != "test"], data=dirs, data_note=data_note,
                command=" ".join(["examples/router_comparison/run.sh"] + (argv or sys.argv[1:])),
                wall_seconds=time.time() - t_start, machine=report.machine())
    report.write(out, runs, meta, BASELINE)
    log(f"router_comparison: report {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("router_comparison: interrupted; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
