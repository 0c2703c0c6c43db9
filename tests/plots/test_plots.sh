#!/usr/bin/env bash
# The plots of `routemoe trace --svg` and the `--html` report, rendered and checked
# (tests/plots/check_svg.py: no label outside the canvas, none over another label or a bar,
# label boxes verified against the rsvg-convert rendering).
#
#   test_plots.sh <routemoe> <data dir> <work dir>
#
# Two real runs (4 MoE layers each; all topk / topk, similarity, attention, ac) with long
# quickstart-style directory names, plotted one at a time, together, as five runs (legends that
# wrap) and with awkward labels (150 characters; <, &, quotes). Every SVG and the SVGs inside the
# HTML report must pass. The plots this build wrote before (kept in tests/plots/fixtures/
# before_*.svg, from the same two runs) must FAIL the same check, and so must a control whose
# text renders wider than its metrics (letter-spacing), which only the rendering can catch.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 <routemoe> <data dir> <work dir>" >&2
  exit 2
fi
bin=$1
data=$2
work=$3/plots
here=$(cd "$(dirname "$0")" && pwd)
fail() {
  echo "FAIL (plots): $*" >&2
  exit 1
}
command -v rsvg-convert >/dev/null || fail "rsvg-convert not found (Debian: librsvg2-bin; launch/install-deps.sh installs it)"
/usr/bin/python3 -c "import numpy" 2>/dev/null || fail "/usr/bin/python3 without numpy (python3-numpy)"
rm -rf "$work"
mkdir -p "$work"

common=(--model.vocab_size=256 --model.seq_len=32 --model.d_model=32 --model.n_heads=2
        --model.n_layers=4 --model.d_ff=48 --model.n_experts=8 --model.top_k=2
        --train.batch_size=4 --train.steps=24 --train.threads=1 --train.progress=false
        --train.eval_every=8 --checkpoint.probe_tokens=256 --checkpoint.record_every=4
        --checkpoint.every=12 --data.path="$data")
A="$work/quickstart-2026-01-15T14-22-33-topk"
B="$work/quickstart-2026-01-15T14-22-41-mixed-routers"
timeout -k 10 120 "$bin" train "${common[@]}" --model.routers=topk,topk,topk,topk --train.out_dir="$A" >"$work/A.log" 2>&1 ||
  fail "training run A: $(tail -n 3 "$work/A.log")"
timeout -k 10 120 "$bin" train "${common[@]}" --model.routers=topk,similarity,attention,ac \
  --train.out_dir="$B" >"$work/B.log" 2>&1 || fail "training run B: $(tail -n 3 "$work/B.log")"

long=$(printf 'x%.0s' {1..150})-topk
"$bin" trace "$B" --svg "$work/one" >/dev/null || fail "trace of one run"
"$bin" trace "$A" "$B" --svg "$work/two" --html "$work/report/index.html" >"$work/table.txt" ||
  fail "trace of two runs"
"$bin" trace "$A" "$B" "$A" "$B" "$A" --svg "$work/five" >/dev/null || fail "trace of five runs"
"$bin" trace "$A" "$B" --label "$long,run <with> & \"quotes\"" --svg "$work/labels" >/dev/null ||
  fail "trace with awkward labels"
for d in one two five labels; do
  for f in fluctuation entropy load loss; do
    [[ -s $work/$d/$f.svg ]] || fail "no $d/$f.svg"
  done
done
# The loss plot has both runs' curves (metrics.jsonl next to each trace): 2 polylines per run.
[[ $(grep -c '<polyline' "$work/two/loss.svg") -eq 4 ]] || fail "loss.svg: expected 4 curves"
grep -q 'layer 3: ac' "$work/two/load.svg" || fail "load.svg: panels do not name the routers"
grep -q 'topk, similarity, attention, ac' "$work/two/fluctuation.svg" ||
  fail "fluctuation.svg: the legend does not name the routers"

# The HTML report: self-contained (no external resource), the four plots and the tables.
html="$work/report/index.html"
[[ $(grep -c '<svg' "$html") -eq 4 ]] || fail "the report does not hold the 4 plots"
grep -q 'routing fluctuation between consecutive records' "$html" || fail "the report has no tables"
if grep -Eq '<(script|link|img|iframe)\b|src=|url\(' "$html"; then
  fail "the report refers to external resources"
fi

/usr/bin/python3 "$here/check_svg.py" --png-dir "$work/png" "$work"/{one,two,five,labels}/*.svg "$html" ||
  fail "a plot has labels outside the canvas or overlapping (see above; PNGs in $work/png)"
# Controls: what this build drew before, and a label the metrics cannot see is wider.
/usr/bin/python3 "$here/check_svg.py" --expect-fail --png-dir "$work/png_before" \
  "$here"/fixtures/before_fluctuation.svg "$here"/fixtures/before_load.svg \
  "$here"/fixtures/control_letter_spacing.svg ||
  fail "the check passed a plot it must refuse"
echo "ok (plots): 16 SVGs and the report's 4 render with every label inside the canvas and apart; the old plots and the control are refused"
