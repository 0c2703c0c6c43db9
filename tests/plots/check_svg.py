#!/usr/bin/python3
"""Checks that the labels of an SVG plot are readable: none leaves the canvas, none overlaps
another label or a bar of the plot. Used by tests/plots/test_plots.sh.

    check_svg.py [--expect-fail] [--png-dir DIR] FILE.svg|FILE.html ...

Each <text> gets a box from a font-metric approximation: the advance widths of DejaVu Sans (the
font rsvg-convert and the plots use) times the font size, the ascender (0.93 em) above the
baseline and the descender (0.24 em) below it, placed by its text-anchor and rotate(-90)
transform. The boxes must lie inside the canvas and must not intersect each other or any filled
<rect> other than the background.

The boxes are then verified against a rendering: the text alone (black, every other element
removed) is drawn by rsvg-convert on a canvas with a margin of 60 px around the original, and
every dark pixel must fall inside some box (grown by 1 px for anti-aliasing). So a width the
approximation underestimates, or text that the renderer places elsewhere, fails the check, and
ink outside the original canvas (clipped text) shows. The full SVG is rendered too (its PNG is
kept in --png-dir for people to look at).

An HTML file is checked by checking every <svg> element in it.

Exit status 0 when every file passes; with --expect-fail, 0 when every file FAILS (the old
plots kept as fixtures must be caught).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

SVG_NS = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)

# DejaVu Sans advance widths of ASCII 32..126 in 1/2048 em (the font's hmtx table).
REGULAR = [651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, 651, 739, 651, 690,
           1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 690, 690, 1716, 1716, 1716,
           1087, 2048, 1401, 1405, 1430, 1577, 1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767,
           1532, 1612, 1235, 1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799, 690,
           799, 1716, 1024, 1024, 1255, 1300, 1126, 1300, 1260, 721, 1300, 1298, 569, 569, 1186,
           569, 1995, 1298, 1253, 1300, 1300, 842, 1067, 803, 1298, 1212, 1675, 1212, 1212, 1075,
           1303, 690, 1303, 1716]
BOLD = [713, 934, 1067, 1716, 1425, 2052, 1786, 627, 936, 936, 1071, 1716, 778, 850, 778, 748,
        1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 819, 819, 1716, 1716, 1716,
        1188, 2048, 1585, 1561, 1503, 1700, 1399, 1399, 1681, 1714, 762, 762, 1587, 1305, 2038,
        1714, 1741, 1501, 1741, 1577, 1475, 1397, 1663, 1585, 2259, 1579, 1483, 1485, 936, 748,
        936, 1716, 1024, 1024, 1382, 1466, 1214, 1466, 1389, 891, 1466, 1458, 702, 702, 1362, 702,
        2134, 1458, 1407, 1466, 1466, 1010, 1219, 979, 1458, 1335, 1892, 1321, 1335, 1192, 1458,
        748, 1458, 1716]
ASCENT, DESCENT = 1901 / 2048, 483 / 2048
MARGIN = 60      # px of extra canvas around the rendering
INK = 200        # a pixel darker than this (0..255 grey) is text
SLACK = 1.0      # px a box grows by for anti-aliased edges
TOUCH = 0.5      # px two boxes may share before they count as overlapping


def tag(el):
    return el.tag.split("}")[-1]


def text_width(s, size, bold):
    table = BOLD if bold else REGULAR
    return sum(table[ord(c) - 32] if 32 <= ord(c) < 127 else 2048 for c in s) / 2048 * size


def number(v, default=0.0):
    m = re.match(r"\s*(-?[0-9.]+)", v or "")
    return float(m.group(1)) if m else default


class Label:
    def __init__(self, el, inherited):
        self.text = "".join(el.itertext())
        size = number(el.get("font-size"), inherited["size"])
        bold = (el.get("font-weight") or inherited["weight"]) == "bold"
        x, y = number(el.get("x")), number(el.get("y"))
        w = text_width(self.text, size, bold)
        anchor = el.get("text-anchor") or inherited["anchor"]
        x0 = x - {"start": 0, "middle": w / 2, "end": w}[anchor]
        box = [x0, y - ASCENT * size, x0 + w, y + DESCENT * size]
        rot = re.match(r"\s*rotate\(\s*(-?[0-9.]+)[ ,]+(-?[0-9.]+)[ ,]+(-?[0-9.]+)\s*\)",
                       el.get("transform") or "")
        if el.get("transform") and not rot:
            raise ValueError(f"unsupported transform {el.get('transform')!r}")
        if rot:
            angle, cx, cy = (float(g) for g in rot.groups())
            if angle != -90:
                raise ValueError(f"unsupported rotation {angle}")
            # (x, y) -> (cx + (y - cy), cy - (x - cx))
            box = [cx + box[1] - cy, cy - (box[2] - cx), cx + box[3] - cy, cy - (box[0] - cx)]
        self.box = box

    def __str__(self):
        t = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"'{t}' [{self.box[0]:.1f}, {self.box[1]:.1f}, {self.box[2]:.1f}, {self.box[3]:.1f}]"


def intersect(a, b, touch):
    return (min(a[2], b[2]) - max(a[0], b[0]) > 2 * touch and
            min(a[3], b[3]) - max(a[1], b[1]) > 2 * touch)


def labels_and_marks(root):
    """The labels (with inherited font settings) and the filled rectangles of the plot."""
    labels, marks = [], []
    width, height = number(root.get("width")), number(root.get("height"))

    def walk(el, inherited):
        inherited = dict(inherited)
        if el.get("font-size"):
            inherited["size"] = number(el.get("font-size"))
        if el.get("font-weight"):
            inherited["weight"] = el.get("font-weight")
        if el.get("text-anchor"):
            inherited["anchor"] = el.get("text-anchor")
        if tag(el) == "text":
            labels.append(Label(el, inherited))
            return
        if tag(el) == "rect":
            x, y = number(el.get("x")), number(el.get("y"))
            w, h = number(el.get("width")), number(el.get("height"))
            fill = (el.get("fill") or "black").lower()
            background = x <= 0 and y <= 0 and w >= width and h >= height
            if not background and fill not in ("none", "white", "#fff", "#ffffff") and w > 0 and h > 0:
                marks.append([x, y, x + w, y + h])
        for child in el:
            walk(child, inherited)

    walk(root, {"size": 12.0, "weight": "normal", "anchor": "start"})
    return width, height, labels, marks


def load_grey(png):
    try:
        from PIL import Image
        import numpy as np
        return np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    except ImportError:
        return load_grey_numpy(png)


def load_grey_numpy(png):
    """A PNG decoder for 8-bit non-interlaced images (what rsvg-convert writes) without PIL."""
    import struct
    import zlib
    import numpy as np
    data = open(png, "rb").read()
    pos, chunks, w, h, bpp = 8, [], 0, 0, 4
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if typ == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, "unsupported PNG"
            bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
        elif typ == b"IDAT":
            chunks.append(body)
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), dtype=np.int32)
    prev = np.zeros(w * bpp, dtype=np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 1:
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) & 255
        elif f == 2:
            cur = (line + prev) & 255
        else:
            cur, L, P = [0] * (w * bpp), line.tolist(), prev.tolist()
            for i in range(w * bpp):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = P[i], (P[i - bpp] if i >= bpp else 0)
                if f == 3:
                    cur[i] = (L[i] + ((a + b) >> 1)) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (L[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.array(cur, dtype=np.int32)
        out[y], prev = cur, cur
    img = out.reshape(h, w, bpp)
    if bpp >= 3:
        return (img[:, :, 0] * 0.299 + img[:, :, 1] * 0.587 + img[:, :, 2] * 0.114).astype(np.uint8)
    return img[:, :, 0].astype(np.uint8)


def render(svg_text, png):
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as f:
        f.write(svg_text)
        name = f.name
    try:
        subprocess.run(["rsvg-convert", "-o", png, name], check=True, capture_output=True)
    finally:
        os.unlink(name)


def text_only(root, width, height):
    """The SVG with only its text, in black, on a canvas grown by MARGIN on every side."""
    out = ET.Element(f"{{{SVG_NS}}}svg", {
        "width": f"{width + 2 * MARGIN:g}", "height": f"{height + 2 * MARGIN:g}",
        "viewBox": f"{-MARGIN} {-MARGIN} {width + 2 * MARGIN:g} {height + 2 * MARGIN:g}"})
    for k in ("font-family", "font-size", "font-weight", "text-anchor"):
        if root.get(k):
            out.set(k, root.get(k))
    ET.SubElement(out, f"{{{SVG_NS}}}rect", {
        "x": f"{-MARGIN}", "y": f"{-MARGIN}", "width": "100%", "height": "100%", "fill": "white"})

    def copy_texts(el, parent_attrs):
        attrs = dict(parent_attrs)
        for k in ("font-size", "font-weight", "text-anchor"):
            if el.get(k):
                attrs[k] = el.get(k)
        if tag(el) == "text":
            t = ET.SubElement(out, f"{{{SVG_NS}}}text", dict(el.attrib))
            for k, v in attrs.items():
                t.attrib.setdefault(k, v)
            t.set("fill", "#000")
            t.text = "".join(el.itertext())
            return
        for child in el:
            copy_texts(child, attrs)

    for child in root:
        copy_texts(child, {})
    return ET.tostring(out, encoding="unicode")


def check_svg(name, svg_text, png_dir):
    """A list of problems of one SVG document (empty when it passes)."""
    import numpy as np
    problems = []
    root = ET.fromstring(svg_text)
    width, height, labels, marks = labels_and_marks(root)
    for lab in labels:
        b = lab.box
        if b[0] < -TOUCH or b[1] < -TOUCH or b[2] > width + TOUCH or b[3] > height + TOUCH:
            problems.append(f"label outside the {width:g} x {height:g} canvas: {lab}")
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a.text.strip() and b.text.strip() and intersect(a.box, b.box, TOUCH):
                problems.append(f"labels overlap: {a} and {b}")
        for m in marks:
            if a.text.strip() and intersect(a.box, m, TOUCH):
                problems.append(f"label over a bar of the plot: {a} and bar {m}")
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "text.png")
        render(text_only(root, width, height), png)
        grey = load_grey(png)
        ink = grey < INK
        covered = np.zeros_like(ink)
        for lab in labels:
            x0, y0, x1, y1 = lab.box
            c0 = max(0, int(np.floor(x0 - SLACK + MARGIN)))
            r0 = max(0, int(np.floor(y0 - SLACK + MARGIN)))
            c1 = min(ink.shape[1], int(np.ceil(x1 + SLACK + MARGIN)))
            r1 = min(ink.shape[0], int(np.ceil(y1 + SLACK + MARGIN)))
            covered[r0:r1, c0:c1] = True
        stray = ink & ~covered
        if stray.any():
            rows, cols = np.nonzero(stray)
            x, y = cols.min() - MARGIN, rows.min() - MARGIN
            near = min(labels, key=lambda l: abs(l.box[0] - x) + abs(l.box[1] - y)) if labels else None
            problems.append(f"{stray.sum()} rendered text pixels outside every label box, from "
                            f"({x}, {y}) to ({cols.max() - MARGIN}, {rows.max() - MARGIN}); "
                            f"nearest label {near}")
        rows, cols = np.nonzero(ink)
        if len(rows):
            outside = ((cols < MARGIN) | (cols >= MARGIN + width) |
                       (rows < MARGIN) | (rows >= MARGIN + height))
            if outside.any():
                problems.append(f"{outside.sum()} rendered text pixels outside the canvas")
        full = os.path.join(png_dir or tmp, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png")
        render(svg_text, full)
    return problems, len(labels)


def documents(path):
    """(name, svg text) of an SVG file, or of every <svg> element of an HTML file."""
    text = open(path, encoding="utf-8").read()
    name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))),
                        os.path.basename(path))
    if not path.endswith(".html"):
        return [(name, text)]
    svgs = re.findall(r"<svg\b.*?</svg>", text, flags=re.S)
    return [(f"{name}#{i}", s) for i, s in enumerate(svgs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--expect-fail", action="store_true")
    ap.add_argument("--png-dir", default="")
    args = ap.parse_args()
    if args.png_dir:
        os.makedirs(args.png_dir, exist_ok=True)
    outcome = []
    for path in args.files:
        docs = documents(path)
        if not docs:
            print(f"FAIL {path}: no <svg> in it")
            outcome.append(False)
            continue
        for name, svg in docs:
            problems, n = check_svg(name, svg, args.png_dir)
            for p in problems[:12]:
                print(f"  {name}: {p}")
            if len(problems) > 12:
                print(f"  {name}: ... {len(problems) - 12} more")
            print(f"{'ok  ' if not problems else 'FAIL'} {name}: {n} labels, {len(problems)} problems")
            outcome.append(not problems)
    if args.expect_fail:
        caught = sum(1 for ok in outcome if not ok)
        print(f"expect-fail: {caught} of {len(outcome)} files caught")
        return 0 if caught == len(outcome) else 1
    return 0 if all(outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
