#!/usr/bin/env python3
"""Runs every shell command of README.md and docs/*.md (the check "every command in README and
docs/ is run by a test and works").

What counts as a command: every line of a fenced block labelled ```sh (or bash, shell), and every
`$ ` line of a ```console block; comments are dropped and lines ending in a backslash are joined.
Blocks labelled ```text are synopses or output and are not run. An unlabelled block must not
hold a line that looks like a command (it starts with routemoe, build/, launch/, mpirun, ...):
such a block has to be labelled sh (to be run) or text (a synopsis, a template).

How they run: the commands of one Markdown file run in order, in one scratch directory of their
own (so a file's commands may build on each other: prepare, then train, then trace), with
`examples/` and `launch/` of the repository linked in, `routemoe` and `build/release/routemoe`
being a wrapper around the binary under test (`build/release/tests` links the build's test
programs), and Open MPI allowed to run as root and to oversubscribe. The wrapper gives every
`routemoe train` tiny sizes (appended, so they win: d 32, T 32, batch 4, 4 steps, 8 when
resuming): the commands are the documented ones, only the model is small. Each command must exit
0 within its time limit.

Exceptions are listed in tests/e2e/doc_commands.txt, each with its reason: `skip` (a command that
needs a cluster, a GPU, the network, or that builds or runs this test suite itself) and `sub`
(a text substitution, e.g. a checkpoint step the tiny runs do not reach). An entry that matches
no command fails the test, so the list cannot go stale.

usage: doc_commands.py <repo root> <build dir> <work dir> [--only FILE.md] [--list]
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import time

FENCE = re.compile(r"^```(\S*)\s*$")
LOOKS_LIKE_COMMAND = re.compile(
    r"^\s*(\$ )?(routemoe|build/|build-\w+/|\./|launch/|examples/|mpirun|cmake|ctest|sbatch|"
    r"scancel|srun)(\s|$)")
RUN_LABELS = {"sh", "bash", "shell"}
PER_COMMAND_TIMEOUT_S = 240

TINY_TRAIN = [
    "--model.seq_len=32", "--model.d_model=32", "--model.n_heads=2", "--model.d_ff=48",
    "--train.batch_size=4", "--train.grad_accum=1", "--train.eval_batches=1",
    "--train.threads=1", "--train.progress=false", "--checkpoint.probe_tokens=256",
]

WRAPPER = """#!/usr/bin/env bash
# routemoe as the documentation's commands see it (tests/e2e/doc_commands.py): `train` gets tiny
# sizes appended (the last value of a key wins), 4 steps, or 8 when it resumes.
real={real}
if [[ ${{1:-}} == train ]]; then
  steps=4
  for a in "$@"; do
    case $a in --resume | --resume=?* | --train.resume=?*) steps=8 ;; esac
  done
  exec "$real" "$@" {tiny} --train.steps=$steps
fi
exec "$real" "$@"
"""


def strip_comment(line):
    """The line without a trailing shell comment (a # at the start or after a blank, outside
    quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def extract(path):
    """[(line number, command)] of one Markdown file, and the problems found (unlabelled blocks
    holding commands)."""
    commands, problems = [], []
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        label, start = m.group(1), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = lines[start:j]
        i = j + 1
        if label == "":
            for k, line in enumerate(body):
                if LOOKS_LIKE_COMMAND.match(line):
                    problems.append(f"{os.path.basename(path)}:{start + k + 1}: an unlabelled code block holds a "
                                    f"command ({line.strip()[:60]}): label it ```sh (run by "
                                    f"this test) or ```text (a synopsis or output)")
                    break
            continue
        if label not in RUN_LABELS and label != "console":
            continue
        pending, first = "", 0
        for k, raw in enumerate(body):
            line = raw
            if label == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            text = strip_comment(line) if not pending else strip_comment(" " + line).lstrip()
            if not pending:
                first = start + k + 1
            if text.endswith("\\"):
                pending += text[:-1].rstrip() + " "
                continue
            cmd = (pending + text).strip()
            pending = ""
            if cmd:
                commands.append((first, cmd))
    return commands, problems


def read_overrides(path):
    """Entries of doc_commands.txt: (kind, pattern, replacement or None, reason)."""
    entries = []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(" | ")]
        if fields[0] == "skip" and len(fields) == 3:
            entries.append({"kind": "skip", "pattern": re.compile(fields[1]), "reason": fields[2],
                            "line": n, "used": 0})
        elif fields[0] == "sub" and len(fields) == 4:
            entries.append({"kind": "sub", "pattern": re.compile(fields[1]), "to": fields[2],
                            "reason": fields[3], "line": n, "used": 0})
        else:
            sys.exit(f"{path}:{n}: expected 'skip | REGEX | REASON' or "
                     f"'sub | REGEX | REPLACEMENT | REASON', got: {line}")
    return entries


def scratch_dir(work, repo, build, name):
    d = os.path.join(work, re.sub(r"[^A-Za-z0-9_.-]", "_", name))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "build", "release"))
    for sub in ("examples", "launch"):
        os.symlink(os.path.join(repo, sub), os.path.join(d, sub))
    os.symlink(os.path.join(build, "tests"), os.path.join(d, "build", "release", "tests"))
    wrapper = os.path.join(d, "build", "release", "routemoe")
    with open(wrapper, "w") as f:
        f.write(WRAPPER.format(real=os.path.join(build, "routemoe"), tiny=" ".join(TINY_TRAIN)))
    os.chmod(wrapper, 0o755)
    return d


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only = None
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
        args.remove(only)
    if len(args) != 3:
        sys.exit(__doc__)
    repo, build, work = (os.path.abspath(a) for a in args)
    overrides = read_overrides(os.path.join(repo, "tests", "e2e", "doc_commands.txt"))
    docs = [os.path.join(repo, "README.md")] + sorted(glob.glob(os.path.join(repo, "docs", "*.md")))
    plan, problems = [], []
    for doc in docs:
        cmds, probs = extract(doc)
        problems += probs
        plan.append((doc, cmds))
    # Apply the overrides to every command (also those of files not run with --only, so that
    # an unused entry is always found).
    runs = []
    for doc, cmds in plan:
        todo = []
        for line, cmd in cmds:
            skip = None
            for e in overrides:
                if e["pattern"].search(cmd):
                    e["used"] += 1
                    if e["kind"] == "skip":
                        skip = skip or e["reason"]
                    else:
                        cmd = e["pattern"].sub(e["to"], cmd)
            todo.append((line, cmd, skip))
        runs.append((doc, todo))
    for e in overrides:
        if e["used"] == 0:
            problems.append(f"doc_commands.txt:{e['line']}: entry matches no command (stale?): "
                            f"{e['pattern'].pattern}")
    if "--list" in sys.argv:
        for doc, todo in runs:
            for line, cmd, skip in todo:
                print(f"{os.path.relpath(doc, repo)}:{line}: {'SKIP (' + skip + ') ' if skip else ''}{cmd}")
        return 0
    failures = 0
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    ran = skipped = 0
    for doc, todo in runs:
        rel = os.path.relpath(doc, repo)
        if only and rel != only and os.path.basename(doc) != only:
            continue
        if not todo:
            continue
        d = scratch_dir(work, repo, build, rel)
        env["PATH"] = os.path.join(d, "build", "release") + os.pathsep + os.environ["PATH"]
        env["ROUTEMOE_BIN"] = os.path.join(d, "build", "release", "routemoe")
        for line, cmd, skip in todo:
            where = f"{rel}:{line}"
            if skip:
                print(f"skip {where}: {cmd}\n     ({skip})")
                skipped += 1
                continue
            t0 = time.monotonic()
            try:
                p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=d, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=PER_COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
                rc, out = p.returncode, p.stdout.decode("utf-8", "replace")
            except subprocess.TimeoutExpired as e:
                rc, out = "timeout", (e.stdout or b"").decode("utf-8", "replace")
            ran += 1
            status = "ok  " if rc == 0 else "FAIL"
            print(f"{status} {where} ({time.monotonic() - t0:.1f} s): {cmd}")
            if rc != 0:
                failures += 1
                tail = "\n".join(out.rstrip().split("\n")[-15:])
                print(f"     exit {rc}; last lines:\n" + "\n".join("     | " + l for l in tail.split("\n")))
            sys.stdout.flush()
    for p in problems:
        print("FAIL " + p)
    print(f"doc_commands: {ran} run, {skipped} skipped, {failures} failed, "
          f"{len(problems)} problem(s) in the documents or the list")
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
