#include "framework/trace/svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "framework/error.h"

namespace routemoe::trace {

namespace {

// ---- text metrics ----

// Advance widths of DejaVu Sans for ASCII 32..126, in units of 1/2048 em (read from the font's
// hmtx table; regular and bold).
constexpr int kRegular[95] = {
    651,  821,  942,  1716, 1303, 1946, 1597, 563,  799,  799,  1024, 1716, 651,  739,  651,  690,
    1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 690,  690,  1716, 1716, 1716, 1087,
    2048, 1401, 1405, 1430, 1577, 1294, 1178, 1587, 1540, 604,  604,  1343, 1141, 1767, 1532, 1612,
    1235, 1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799,  690,  799,  1716, 1024,
    1024, 1255, 1300, 1126, 1300, 1260, 721,  1300, 1298, 569,  569,  1186, 569,  1995, 1298, 1253,
    1300, 1300, 842,  1067, 803,  1298, 1212, 1675, 1212, 1212, 1075, 1303, 690,  1303, 1716};
constexpr int kBold[95] = {
    713,  934,  1067, 1716, 1425, 2052, 1786, 627,  936,  936,  1071, 1716, 778,  850,  778,  748,
    1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 819,  819,  1716, 1716, 1716, 1188,
    2048, 1585, 1561, 1503, 1700, 1399, 1399, 1681, 1714, 762,  762,  1587, 1305, 2038, 1714, 1741,
    1501, 1741, 1577, 1475, 1397, 1663, 1585, 2259, 1579, 1483, 1485, 936,  748,  936,  1716, 1024,
    1024, 1382, 1466, 1214, 1466, 1389, 891,  1466, 1458, 702,  702,  1362, 702,  2134, 1458, 1407,
    1466, 1466, 1010, 1219, 979,  1458, 1335, 1892, 1321, 1335, 1192, 1458, 748,  1458, 1716};
constexpr const char* kFontFamily = "DejaVu Sans, Verdana, sans-serif";
constexpr double kFontSize = 12;   // labels, legends, ticks
constexpr double kTitleSize = 15;  // bold plot titles
constexpr double kAscent = 0.93;   // of the em box above the baseline (DejaVu: 1901/2048)
constexpr const char* kEllipsis = "...";

// The UTF-8 characters of `s`, each as its bytes.
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// ---- SVG pieces ----

// Categorical palette (Tableau 10), readable on white.
constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
constexpr std::size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);
constexpr const char* kDashes[] = {"", "8 4", "2 3", "10 3 2 3", "14 4", "4 2 1 2", "6 6"};
constexpr std::size_t kDashCount = sizeof(kDashes) / sizeof(kDashes[0]);
constexpr const char* kGrey = "#555555";

const char* color_of(std::size_t i) {
  return kPalette[i % kPaletteSize];
}

std::string dash_attr(std::size_t i) {
  const char* d = kDashes[i % kDashCount];
  return d[0] != '\0' ? fmt::format(" stroke-dasharray=\"{}\"", d) : std::string();
}

std::string esc(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string tick_label(double v) {
  if (std::fabs(v) < 1e-12) return "0";
  return fmt::format("{:g}", v);
}

std::string svg_open(double w, double h) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"{2}\" font-size=\"{3:g}\">\n<rect "
      "x=\"0\" y=\"0\" width=\"{0:.0f}\" height=\"{1:.0f}\" fill=\"white\"/>\n",
      w, h, kFontFamily, kFontSize);
}

struct TextStyle {
  const char* anchor = "start";
  double size = kFontSize;
  bool bold = false;
  const char* fill = nullptr;
};

std::string text(double x, double y, const std::string& s, const TextStyle& st = {},
                 const std::string& extra = "") {
  std::string attrs;
  if (st.size != kFontSize) attrs += fmt::format(" font-size=\"{:g}\"", st.size);
  if (st.bold) attrs += " font-weight=\"bold\"";
  if (st.fill != nullptr) attrs += fmt::format(" fill=\"{}\"", st.fill);
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\"{}{}>{}</text>\n", x, y,
                     st.anchor, attrs, extra, esc(s));
}

std::string line(double x1, double y1, double x2, double y2, const std::string& stroke,
                 const std::string& extra = "") {
  return fmt::format(
      "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\"{}/>\n", x1, y1,
      x2, y2, stroke, extra);
}

// Linear map of [d0, d1] onto [r0, r1].
struct Scale {
  double d0, d1, r0, r1;
  double operator()(double v) const {
    return d1 == d0 ? r0 : r0 + (v - d0) / (d1 - d0) * (r1 - r0);
  }
};

double max_width(const std::vector<double>& ticks, double size) {
  double w = 0;
  for (double t : ticks) w = std::max(w, text_width(tick_label(t), size));
  return w;
}

// Ticks for an axis of `length` px whose labels are `label_extent(ticks)` px long along it:
// the most of about 8 intervals whose labels keep a 12 px gap.
template <typename Extent>
std::vector<double> fitted_ticks(double lo, double hi, double length, Extent&& label_extent) {
  std::vector<double> ticks = nice_ticks(lo, hi, 8);
  for (int target = 8; target >= 1; --target) {
    ticks = nice_ticks(lo, hi, target);
    const double step = length / static_cast<double>(std::max<std::size_t>(1, ticks.size() - 1));
    if (label_extent(ticks) + 12 <= step || ticks.size() <= 2) break;
  }
  return ticks;
}

// ---- legends ----

struct LegendEntry {
  std::string label;
  std::string color = kGrey;
  std::size_t dash = 0;
  bool marker = false;
  bool bar = false;  // a filled square instead of a line
};

struct LegendGroup {
  std::string heading;  // "" for none
  std::vector<LegendEntry> entries;
};

constexpr double kSwatch = 30, kSwatchGap = 6, kEntryGap = 22, kRow = 20;

// Lays the groups out from (x, y) within `width` px, wrapping entries into rows; returns the
// SVG and sets `height` to the space used.
std::string legend(const std::vector<LegendGroup>& groups, double x, double y, double width,
                   double* height) {
  std::string out;
  double cy = y;
  for (const LegendGroup& g : groups) {
    if (!g.heading.empty()) {
      cy += kRow;
      out += text(x, cy - 5, fit_text(g.heading, width, kFontSize, true), {.bold = true});
    }
    double cx = x;
    bool row_open = false;
    for (const LegendEntry& e : g.entries) {
      const std::string label = fit_text(e.label, width - kSwatch - kSwatchGap, kFontSize);
      const double w = kSwatch + kSwatchGap + text_width(label, kFontSize);
      if (!row_open || cx + w > x + width) {
        cy += kRow;
        cx = x;
        row_open = true;
      }
      const double mid = cy - 9;
      if (e.bar) {
        out += fmt::format(
            "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n",
            cx + kSwatch / 2 - 6, mid - 6, e.color);
      } else {
        out += line(cx, mid, cx + kSwatch, mid, e.color, " stroke-width=\"2\"" + dash_attr(e.dash));
        if (e.marker) {
          out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n",
                             cx + kSwatch / 2, mid, e.color);
        }
      }
      out += text(cx + kSwatch + kSwatchGap, cy - 5, label);
      cx += w + kEntryGap;
    }
    cy += 6;
  }
  *height = cy - y;
  return out;
}

// The router of every MoE layer: the run's list, else what its last record says.
std::vector<std::string> routers_of(const Run& run) {
  if (!run.routers.empty() || run.records.empty()) return run.routers;
  std::vector<std::string> out;
  for (const LayerRouting& l : run.records.back().layers) out.push_back(l.router);
  if (std::any_of(out.begin(), out.end(), [](const std::string& r) { return r.empty(); }))
    return {};
  return out;
}

// "topk, similarity, attention, ac" or "topk (all 4 layers)".
std::string routers_text(const Run& run) {
  const std::vector<std::string> routers = routers_of(run);
  if (routers.empty()) return "routers unknown";
  const bool same = std::all_of(routers.begin(), routers.end(),
                                [&](const std::string& r) { return r == routers.front(); });
  if (same && routers.size() > 1) {
    return fmt::format("{} (all {} layers)", routers.front(), routers.size());
  }
  return fmt::format("{}", fmt::join(routers, ", "));
}

std::string router_of(const Run& run, std::size_t layer) {
  const std::vector<std::string> routers = routers_of(run);
  return layer < routers.size() ? routers[layer] : std::string("?");
}

std::vector<std::string> labels_of(const std::vector<RunMetrics>& metrics, double width) {
  std::vector<std::string> names;
  for (const RunMetrics& rm : metrics) names.push_back(rm.run->label);
  return short_names(names, width, kFontSize);
}

// Legend of runs (colour) and MoE layers (dash) for line charts over runs and layers; with one
// run, one group of layers in colour and dash.
std::vector<LegendGroup> run_layer_legend(const std::vector<RunMetrics>& metrics, double width) {
  std::vector<LegendGroup> groups;
  std::size_t layers = 0;
  for (const RunMetrics& rm : metrics) {
    layers = std::max(layers, static_cast<std::size_t>(rm.run->n_moe_layers));
  }
  if (metrics.size() == 1) {
    const Run& run = *metrics.front().run;
    LegendGroup g{fmt::format("MoE layers of {}", run.label), {}};
    for (std::size_t m = 0; m < layers; ++m) {
      g.entries.push_back({fmt::format("layer {}: {}", m, router_of(run, m)), color_of(m), m});
    }
    return {g};
  }
  const std::vector<std::string> names = labels_of(metrics, width / 2);
  LegendGroup runs{"Runs (colour): routers per MoE layer", {}};
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    runs.entries.push_back(
        {fmt::format("{}: {}", names[i], routers_text(*metrics[i].run)), color_of(i)});
  }
  LegendGroup dashes{"MoE layers (line style)", {}};
  for (std::size_t m = 0; m < layers; ++m) {
    dashes.entries.push_back({fmt::format("layer {}", m), kGrey, m});
  }
  return {runs, dashes};
}

// ---- line charts ----

struct Series {
  std::vector<std::pair<double, double>> points;
  std::string color;
  std::size_t dash = 0;
  bool markers = true;
  double stroke = 2;
  std::string title;  // tooltip
};

struct LineChart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool fixed_y = false;  // y from y0 to y1 instead of the data's range
  double y0 = 0, y1 = 1;
  bool y_from_zero = true;          // else the data's minimum
  std::vector<double> reference_y;  // dashed grey lines across the plot
  std::vector<LegendGroup> legend;
  std::string empty_note;  // shown in the plot when no series has points
};

constexpr double kWidth = 920, kMargin = 16, kPlotHeight = 340;

std::string render(const LineChart& c) {
  double xmin = 0, xmax = 1, ymin = c.y0, ymax = c.y1;
  bool any = false;
  for (const Series& s : c.series) {
    for (const auto& [x, y] : s.points) {
      xmin = any ? std::min(xmin, x) : x;
      xmax = any ? std::max(xmax, x) : x;
      if (!c.fixed_y) {
        ymin = any ? std::min(ymin, y) : y;
        ymax = any ? std::max(ymax, y) : y;
      }
      any = true;
    }
  }
  if (!c.fixed_y) {
    if (c.y_from_zero) ymin = 0;
    if (ymax <= ymin) ymax = ymin + (ymin > 0 ? ymin * 0.1 : 0.1);
  }
  const double top = kMargin + 32, plot_h = kPlotHeight, bottom = top + plot_h;
  const std::vector<double> yt =
      fitted_ticks(ymin, ymax, plot_h, [](const std::vector<double>&) { return kFontSize; });
  const double ytick_w = max_width(yt, kFontSize);
  const double left = kMargin + 20 + 8 + ytick_w + 8;  // y label, gap, tick labels, tick
  const double right = kWidth - kMargin - 8;
  const std::vector<double> xt =
      fitted_ticks(xmin, xmax, right - left, [](const auto& t) { return max_width(t, kFontSize); });
  const Scale sx{xt.front(), xt.back(), left, right};
  const Scale sy{yt.front(), yt.back(), bottom, top};

  std::string body;
  body += text(kWidth / 2, kMargin + 15, fit_text(c.title, kWidth - 2 * kMargin, kTitleSize, true),
               {.anchor = "middle", .size = kTitleSize, .bold = true});
  for (double t : yt) {
    body += line(left, sy(t), right, sy(t), "#e6e6e6");
    body += line(left - 5, sy(t), left, sy(t), "#333");
    body += text(left - 8, sy(t) + 4, tick_label(t), {.anchor = "end"});
  }
  for (double t : xt) {
    body += line(sx(t), bottom, sx(t), top, "#f2f2f2");
    body += line(sx(t), bottom, sx(t), bottom + 5, "#333");
    body += text(sx(t), bottom + 18, tick_label(t), {.anchor = "middle"});
  }
  body += line(left, bottom, right, bottom, "#333") + line(left, bottom, left, top, "#333");
  body += text((left + right) / 2, bottom + 38, fit_text(c.xlabel, right - left, kFontSize),
               {.anchor = "middle"});
  const double ly = kMargin + 14, lcy = (top + bottom) / 2;
  body += text(ly, lcy, fit_text(c.ylabel, plot_h, kFontSize), {.anchor = "middle"},
               fmt::format(" transform=\"rotate(-90 {:.1f} {:.1f})\"", ly, lcy));
  for (double y : c.reference_y) {
    if (y >= yt.front() && y <= yt.back())
      body += line(left, sy(y), right, sy(y), kGrey, " stroke-dasharray=\"5 3\"");
  }
  for (const Series& s : c.series) {
    if (s.points.empty()) continue;
    std::string pts;
    for (const auto& [x, y] : s.points)
      pts += fmt::format("{}{:.1f},{:.1f}", pts.empty() ? "" : " ", sx(x), sy(y));
    body += fmt::format(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{:g}\"{}>"
        "<title>{}</title></polyline>\n",
        pts, s.color, s.stroke, dash_attr(s.dash), esc(s.title));
    if (!s.markers) continue;
    for (const auto& [x, y] : s.points) {
      body += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", sx(x),
                          sy(y), s.color);
    }
  }
  if (!any && !c.empty_note.empty()) {
    body += text((left + right) / 2, (top + bottom) / 2,
                 fit_text(c.empty_note, right - left - 20, kFontSize),
                 {.anchor = "middle", .fill = "#a00"});
  }
  double legend_h = 0;
  body += legend(c.legend, kMargin, bottom + 52, kWidth - 2 * kMargin, &legend_h);
  const double height = bottom + 52 + legend_h + kMargin;
  return svg_open(kWidth, height) + body + "</svg>\n";
}

// x of a record: its fractional epoch when every run gives its steps per epoch, else its step.
struct XAxis {
  bool by_epoch = true;
  double x(const Run& run, std::int64_t step) const {
    return by_epoch ? static_cast<double>(step) / steps_per_epoch(run) : static_cast<double>(step);
  }
  std::string label(const char* what) const {
    return fmt::format("{} ({})", by_epoch ? "epoch" : "step", what);
  }
};

XAxis x_axis(const std::vector<RunMetrics>& metrics) {
  XAxis a;
  for (const RunMetrics& rm : metrics) {
    if (!rm.run->records.empty() && steps_per_epoch(*rm.run) <= 0) a.by_epoch = false;
  }
  return a;
}

// ---- load panels ----

constexpr double kPanelW = 250, kPanelH = 200;
constexpr std::size_t kMaxColumns = 4;

std::string load_panel(const Run& run, const Load& l, std::size_t color, double ox, double oy,
                       const std::vector<double>& yt) {
  std::string out;
  const double cx = ox + kPanelW / 2;
  out += text(cx, oy + 16,
              fit_text(fmt::format("layer {}: {}", l.layer, router_of(run, l.layer)), kPanelW - 12,
                       kFontSize, true),
              {.anchor = "middle", .bold = true});
  out +=
      text(cx, oy + 31, fit_text(fmt::format("H/log E = {:.3f}", l.entropy_norm), kPanelW - 12, 11),
           {.anchor = "middle", .size = 11, .fill = kGrey});
  const double left = ox + 8 + max_width(yt, 11) + 8, right = ox + kPanelW - 10;
  const double top = oy + 44, bottom = oy + kPanelH - 36;
  const Scale sy{yt.front(), yt.back(), bottom, top};
  for (double t : yt) {
    out += line(left, sy(t), right, sy(t), "#e6e6e6");
    out += text(left - 6, sy(t) + 4, tick_label(t), {.anchor = "end", .size = 11});
  }
  const std::size_t n_e = l.shares.size();
  const double slot = (right - left) / static_cast<double>(std::max<std::size_t>(1, n_e));
  const double label_w = text_width(std::to_string(n_e - 1), 11) + 4;
  const auto every = static_cast<std::size_t>(std::max(1.0, std::ceil(label_w / slot)));
  for (std::size_t e = 0; e < n_e; ++e) {
    const double x0 = left + slot * static_cast<double>(e);
    const double y0 = sy(l.shares[e]);
    out += fmt::format(
        "<rect class=\"bar\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
        "fill=\"{}\"><title>expert {}: {:.4f} ({} tokens)</title></rect>\n",
        x0 + slot * 0.1, y0, slot * 0.8, bottom - y0, color_of(color), e, l.shares[e], l.counts[e]);
    if (e % every == 0) {
      out += text(x0 + slot / 2, bottom + 14, std::to_string(e), {.anchor = "middle", .size = 11});
    }
  }
  out += line(left, bottom, right, bottom, "#333") + line(left, bottom, left, top, "#333");
  const double uy = sy(1.0 / static_cast<double>(std::max<std::size_t>(1, n_e)));
  out += line(left, uy, right, uy, kGrey, " stroke-dasharray=\"5 3\"");
  out += text((left + right) / 2, bottom + 30, "expert", {.anchor = "middle", .size = 11});
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Metrics of text

double text_width(const std::string& s, double size, bool bold) {
  const int* w = bold ? kBold : kRegular;
  double units = 0;
  for (const std::string& ch : utf8_chars(s)) {
    const auto c = static_cast<unsigned char>(ch[0]);
    units += ch.size() == 1 && c >= 32 && c < 127 ? w[c - 32] : 2048;
  }
  return units / 2048.0 * size;
}

std::string fit_text(const std::string& s, double width, double size, bool bold) {
  if (text_width(s, size, bold) <= width) return s;
  const std::vector<std::string> chars = utf8_chars(s);
  // Keep the most characters, about 2/5 from the start and 3/5 from the end (run names differ
  // at their ends more often).
  for (std::size_t keep = chars.size(); keep-- > 0;) {
    const std::size_t head = keep * 2 / 5, tail = keep - head;
    std::string out;
    for (std::size_t i = 0; i < head; ++i) out += chars[i];
    out += kEllipsis;
    for (std::size_t i = chars.size() - tail; i < chars.size(); ++i) out += chars[i];
    if (text_width(out, size, bold) <= width) return out;
  }
  return "";
}

std::vector<std::string> short_names(const std::vector<std::string>& names, double width,
                                     double size) {
  const bool all_fit = std::all_of(names.begin(), names.end(), [&](const std::string& n) {
    return text_width(n, size) <= width;
  });
  if (all_fit) return names;
  std::vector<std::string> out = names;
  if (names.size() > 1) {
    // The longest prefix all names share, cut after its last separator.
    std::size_t common = names.front().size();
    for (const std::string& n : names) {
      std::size_t i = 0;
      while (i < common && i < n.size() && n[i] == names.front()[i]) ++i;
      common = i;
    }
    const std::size_t cut = names.front().find_last_of("-_./: T", common == 0 ? 0 : common - 1);
    if (common > 0 && cut != std::string::npos && cut + 1 >= 6) {
      for (std::string& n : out) n = kEllipsis + n.substr(cut + 1);
    }
  }
  for (std::string& n : out) n = fit_text(n, width, size);
  std::map<std::string, int> seen;
  for (std::string& n : out) {
    const int k = ++seen[n];
    if (k > 1)
      n = fit_text(n, width - text_width(fmt::format(" ({})", k), size), size) +
          fmt::format(" ({})", k);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Axes

double steps_per_epoch(const Run& run) {
  for (const Record& r : run.records) {
    if (r.reason == "epoch_end" && r.epoch > 0 && r.step > 0 && r.step % r.epoch == 0) {
      return static_cast<double>(r.step / r.epoch);
    }
  }
  return 0;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) {
    const double pad = std::fabs(lo) > 0 ? std::fabs(lo) * 0.5 : 1.0;
    lo -= pad;
    hi += pad;
    if (lo < 0 && lo + pad >= 0) lo = 0;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  const double first = std::floor(lo / step + 1e-9) * step;
  const double last = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (int i = 0; first + i * step <= last + step * 1e-6; ++i) {
    double t = first + i * step;
    if (std::fabs(t) < step * 1e-9) t = 0;
    ticks.push_back(t);
  }
  return ticks;
}

// ---------------------------------------------------------------------------------------------
// Plots

// One series per (run, MoE layer): colour per run (per layer when there is one run), dash per
// layer, the router in the tooltip; the points are `point(run, item)` of the items of
// `rm.*items` that belong to the layer.
template <typename Item, typename Point>
std::vector<Series> run_layer_series(const std::vector<RunMetrics>& metrics,
                                     std::vector<Item> RunMetrics::*items, Point point) {
  std::vector<Series> out;
  const bool one = metrics.size() == 1;
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    const RunMetrics& rm = metrics[i];
    for (std::size_t m = 0; m < static_cast<std::size_t>(rm.run->n_moe_layers); ++m) {
      Series s;
      s.color = color_of(one ? m : i);
      s.dash = m;
      s.title = fmt::format("{} / layer {} ({})", rm.run->label, m, router_of(*rm.run, m));
      for (const Item& item : rm.*items) {
        if (static_cast<std::size_t>(item.layer) == m) s.points.push_back(point(*rm.run, item));
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::string fluctuation_svg(const std::vector<RunMetrics>& metrics) {
  const XAxis ax = x_axis(metrics);
  LineChart c;
  c.title = "Routing fluctuation: top-1 flip rate between consecutive records";
  c.xlabel = ax.label("of the later record");
  c.ylabel = "top-1 flip rate (share of probe tokens)";
  c.empty_note = "no pairs of consecutive records (fewer than 2 records)";
  c.series = run_layer_series(metrics, &RunMetrics::flips, [&](const Run& run, const PairFlip& p) {
    return std::pair{ax.x(run, p.to_step), p.top1_flip_rate};
  });
  c.legend = run_layer_legend(metrics, kWidth - 2 * kMargin);
  return render(c);
}

std::string entropy_svg(const std::vector<RunMetrics>& metrics) {
  const XAxis ax = x_axis(metrics);
  LineChart c;
  c.title = "Expert load balance over time: entropy of first choices / log E";
  c.xlabel = ax.label("of the record");
  c.ylabel = "H / log E (1 = uniform load)";
  c.fixed_y = true;
  c.reference_y = {1.0};
  c.empty_note = "no routing records";
  c.series = run_layer_series(metrics, &RunMetrics::load_entropy,
                              [&](const Run& run, const EntropyPoint& e) {
                                return std::pair{ax.x(run, e.step), e.entropy_norm};
                              });
  c.legend = run_layer_legend(metrics, kWidth - 2 * kMargin);
  c.legend.push_back({"", {{"uniform load (H = log E)", kGrey, 1}}});
  return render(c);
}

std::string loss_svg(const std::vector<RunMetrics>& metrics) {
  LineChart c;
  c.title = "Loss: training (every logged step) and validation";
  c.xlabel = "step (the \"step\" field of metrics.jsonl)";
  c.ylabel = "loss";
  c.y_from_zero = false;
  c.empty_note = "no metrics.jsonl next to the traces (pass run directories)";
  const std::vector<std::string> names = labels_of(metrics, (kWidth - 2 * kMargin) / 2);
  LegendGroup runs{"Runs (colour)", {}};
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    const Run& run = *metrics[i].run;
    Series train, val;
    train.color = val.color = color_of(i);
    train.markers = false;
    train.stroke = 1.5;
    train.title = fmt::format("{}: training loss", run.label);
    val.dash = 1;
    val.title = fmt::format("{}: validation loss", run.label);
    for (const LossPoint& p : run.train_loss)
      train.points.emplace_back(static_cast<double>(p.step), p.loss);
    for (const LossPoint& p : run.val_loss)
      val.points.emplace_back(static_cast<double>(p.step), p.loss);
    c.series.push_back(std::move(train));
    c.series.push_back(std::move(val));
    const bool none = run.train_loss.empty() && run.val_loss.empty();
    runs.entries.push_back(
        {fmt::format("{}: {}{}", names[i], routers_text(run), none ? " (no metrics.jsonl)" : ""),
         color_of(i)});
  }
  c.legend = {
      runs,
      {"Curves (line style)", {{"training loss", kGrey, 0}, {"validation loss", kGrey, 1, true}}}};
  return render(c);
}

std::string load_svg(const std::vector<RunMetrics>& metrics) {
  double ymax = 0;
  std::size_t cols = 1;
  for (const RunMetrics& rm : metrics) {
    cols = std::max(cols, std::min(kMaxColumns, rm.load.size()));
    for (const Load& l : rm.load) {
      for (double s : l.shares) ymax = std::max(ymax, s);
      ymax = std::max(ymax, 1.0 / static_cast<double>(std::max<std::size_t>(1, l.shares.size())));
    }
  }
  if (ymax <= 0) ymax = 1;
  const std::vector<double> yt = nice_ticks(0, ymax, 4);
  const double width = std::max(560.0, static_cast<double>(cols) * kPanelW + 2 * kMargin);
  std::string body;
  body += text(width / 2, kMargin + 15,
               fit_text("Expert load at the last record: share of first choices per expert",
                        width - 2 * kMargin, kTitleSize, true),
               {.anchor = "middle", .size = kTitleSize, .bold = true});
  double legend_h = 0;
  body += legend(
      {{"",
        {{"share of the probe tokens whose first choice is the expert", kGrey, 0, false, true},
         {"uniform share 1/E", kGrey, 1}}}},
      kMargin, kMargin + 24, width - 2 * kMargin, &legend_h);
  double y = kMargin + 24 + legend_h + 8;
  if (metrics.empty() || std::all_of(metrics.begin(), metrics.end(),
                                     [](const RunMetrics& rm) { return rm.load.empty(); })) {
    body += text(width / 2, y + 30, "no routing records", {.anchor = "middle", .fill = "#a00"});
    y += 50;
  }
  const std::vector<std::string> names = labels_of(metrics, width / 2);
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    const RunMetrics& rm = metrics[i];
    if (rm.load.empty()) continue;
    y += 22;
    const std::string step = fmt::format(" (step {})", rm.load.front().step);
    body +=
        fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n",
                    kMargin, y - 11, color_of(i));
    body += text(
        kMargin + 18, y,
        fit_text(fmt::format("{}: {}", names[i], routers_text(*rm.run)),
                 width - 2 * kMargin - 18 - text_width(step, kFontSize, true), kFontSize, true) +
            step,
        {.bold = true});
    y += 6;
    for (std::size_t p = 0; p < rm.load.size(); ++p) {
      const double ox = kMargin + kPanelW * static_cast<double>(p % kMaxColumns);
      const double oy = y + kPanelH * static_cast<double>(p / kMaxColumns);
      body += load_panel(*rm.run, rm.load[p], i, ox, oy, yt);
    }
    y += kPanelH * static_cast<double>((rm.load.size() + kMaxColumns - 1) / kMaxColumns);
  }
  return svg_open(width, y + kMargin) + body + "</svg>\n";
}

// ---------------------------------------------------------------------------------------------
// HTML report

std::string html_report(const std::vector<RunMetrics>& metrics) {
  std::string out =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>routemoe trace report</title>\n<style>\n"
      "body { font-family: DejaVu Sans, Verdana, sans-serif; margin: 2em auto; max-width: 980px; "
      "color: #222; }\n"
      "table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }\n"
      "th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; "
      "}\n"
      "th { background: #f3f3f3; }\n"
      "svg { max-width: 100%; height: auto; display: block; margin: 1em 0; }\n"
      "pre { font-size: 12px; background: #f8f8f8; padding: 1em; overflow-x: auto; }\n"
      "</style>\n</head>\n<body>\n<h1>Routing report</h1>\n"
      "<p>Routing fluctuation of the probe set (docs/analysis.md), made by "
      "<code>routemoe trace</code>.</p>\n";
  out +=
      "<table>\n<tr><th>run</th><th>records</th><th>steps</th><th>routers</th><th>probe "
      "tokens</th><th>top-k</th><th>experts</th><th>read from</th></tr>\n";
  for (const RunMetrics& rm : metrics) {
    const Run& run = *rm.run;
    const std::string steps =
        run.records.empty()
            ? std::string("-")
            : fmt::format("{} .. {}", run.records.front().step, run.records.back().step);
    std::string sources;
    for (const std::string& s : run.sources) sources += (sources.empty() ? "" : "<br>") + esc(s);
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}"
        "</td></tr>\n",
        esc(run.label), run.records.size(), steps, esc(routers_text(run)), run.n_probe, run.top_k,
        run.n_experts, sources);
  }
  out += "</table>\n";
  const std::pair<const char*, std::string> plots[] = {
      {"Routing fluctuation", fluctuation_svg(metrics)},
      {"Expert load balance over time", entropy_svg(metrics)},
      {"Expert load at the last record", load_svg(metrics)},
      {"Loss", loss_svg(metrics)}};
  for (const auto& [title, svg] : plots) out += fmt::format("<h2>{}</h2>\n{}", title, svg);
  out +=
      fmt::format("<h2>Tables</h2>\n<pre>{}</pre>\n</body>\n</html>\n", esc(format_table(metrics)));
  return out;
}

std::vector<std::string> write_svg_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    RM_FAIL(Io, fmt::format("{}: cannot create directory: {}", dir, ec.message()));
  }
  const std::pair<const char*, std::string> files[] = {
      {"fluctuation.svg", fluctuation_svg(metrics)},
      {"entropy.svg", entropy_svg(metrics)},
      {"load.svg", load_svg(metrics)},
      {"loss.svg", loss_svg(metrics)}};
  std::vector<std::string> written;
  for (const auto& [name, svg] : files) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    write_text_file(path, svg);
    written.push_back(path);
  }
  return written;
}

}  // namespace routemoe::trace
