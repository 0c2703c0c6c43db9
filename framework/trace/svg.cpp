#include "framework/trace/svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "framework/error.h"

namespace routemoe::trace {

namespace {

// Categorical palette (Tableau 10), readable on white.
constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
constexpr std::size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);
constexpr const char* kDashes[] = {"", "7 4", "2 3", "9 3 2 3", "14 4", "4 2 1 2"};
constexpr std::size_t kDashCount = sizeof(kDashes) / sizeof(kDashes[0]);

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

std::string header(double w, double h) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"Helvetica, Arial, sans-serif\" "
      "font-size=\"12\">\n<rect x=\"0\" y=\"0\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "fill=\"white\"/>\n",
      w, h);
}

std::string text(double x, double y, const std::string& s, const char* anchor = "start",
                 const std::string& extra = "") {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\"{}>{}</text>\n", x, y,
                     anchor, extra, esc(s));
}

// Linear map of [d0, d1] onto [r0, r1].
struct Scale {
  double d0, d1, r0, r1;
  double operator()(double v) const {
    return d1 == d0 ? r0 : r0 + (v - d0) / (d1 - d0) * (r1 - r0);
  }
};

// Axes with grid lines, tick labels and axis titles for a plot box.
std::string axes(const Scale& x, const Scale& y, const std::vector<double>& xticks,
                 const std::vector<double>& yticks, const std::string& xlabel,
                 const std::string& ylabel) {
  std::string out;
  const double left = x.r0, right = x.r1, bottom = y.r0, top = y.r1;
  for (double t : yticks) {
    const double py = y(t);
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e0e0e0\"/>\n",
        left, py, right, py);
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#333\"/>\n",
        left - 5, py, left, py);
    out += text(left - 8, py + 4, tick_label(t), "end");
  }
  for (double t : xticks) {
    const double px = x(t);
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#f0f0f0\"/>\n", px,
        bottom, px, top);
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#333\"/>\n",
        px, bottom, px, bottom + 5);
    out += text(px, bottom + 18, tick_label(t), "middle");
  }
  out += fmt::format(
      "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" "
      "stroke=\"#333\"/>\n",
      left, bottom, right);
  out += fmt::format(
      "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" "
      "stroke=\"#333\"/>\n",
      left, bottom, top);
  if (!xlabel.empty()) out += text((left + right) / 2, bottom + 38, xlabel, "middle");
  if (!ylabel.empty()) {
    const double cx = left - 48, cy = (top + bottom) / 2;
    out += text(cx, cy, ylabel, "middle",
                fmt::format(" transform=\"rotate(-90 {:.1f} {:.1f})\"", cx, cy));
  }
  return out;
}

}  // namespace

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

std::string fluctuation_svg(const std::vector<RunMetrics>& metrics) {
  // x of every pair: fractional epoch when every run gives its steps per epoch, else step.
  bool by_epoch = true;
  for (const RunMetrics& rm : metrics) {
    if (!rm.flips.empty() && steps_per_epoch(*rm.run) <= 0) by_epoch = false;
  }
  auto x_of = [&](const RunMetrics& rm, const PairFlip& p) {
    const double spe = steps_per_epoch(*rm.run);
    return by_epoch ? static_cast<double>(p.to_step) / spe : static_cast<double>(p.to_step);
  };
  double xmin = 0, xmax = 0, ymax = 0;
  bool any = false;
  std::size_t n_series = 0;
  for (const RunMetrics& rm : metrics) {
    n_series += static_cast<std::size_t>(rm.run->n_moe_layers);
    for (const PairFlip& p : rm.flips) {
      const double x = x_of(rm, p);
      xmin = any ? std::min(xmin, x) : x;
      xmax = any ? std::max(xmax, x) : x;
      ymax = std::max(ymax, p.top1_flip_rate);
      any = true;
    }
  }
  if (ymax <= 0) ymax = 0.1;
  const std::vector<double> xt = nice_ticks(xmin, xmax, 8);
  const std::vector<double> yt = nice_ticks(0, ymax, 6);

  const double left = 80, plot_w = 620, top = 50, plot_h = 360, legend_w = 260;
  const double entry_h = 18;
  const double legend_h = 30 + entry_h * static_cast<double>(n_series);
  const double height = std::max(top + plot_h + 70, top + legend_h + 20);
  const double width = left + plot_w + 30 + legend_w;
  const Scale sx{xt.front(), xt.back(), left, left + plot_w};
  const Scale sy{yt.front(), yt.back(), top + plot_h, top};

  std::string out = header(width, height);
  out += text(left + plot_w / 2, 28,
              "Routing fluctuation: top-1 flip rate between consecutive records", "middle",
              " font-size=\"15\" font-weight=\"bold\"");
  out +=
      axes(sx, sy, xt, yt, by_epoch ? "epoch (of the later record)" : "step (of the later record)",
           "top-1 flip rate");
  if (!any) {
    out +=
        text(left + plot_w / 2, top + plot_h / 2,
             "no pairs of consecutive records (fewer than 2 records)", "middle", " fill=\"#a00\"");
  }

  const bool single_run = metrics.size() == 1;
  const double lx = left + plot_w + 30;
  double ly = top + 10;
  out +=
      text(lx, ly, single_run ? "MoE layer" : "run / MoE layer", "start", " font-weight=\"bold\"");
  ly += entry_h;
  for (std::size_t ri = 0; ri < metrics.size(); ++ri) {
    const RunMetrics& rm = metrics[ri];
    const auto n_layers = static_cast<std::size_t>(rm.run->n_moe_layers);
    for (std::size_t m = 0; m < n_layers; ++m) {
      const char* color = kPalette[(single_run ? m : ri) % kPaletteSize];
      const char* dash = single_run ? "" : kDashes[m % kDashCount];
      const std::string dash_attr =
          dash[0] ? fmt::format(" stroke-dasharray=\"{}\"", dash) : std::string();
      const std::string name = single_run ? fmt::format("{}: layer {}", rm.run->label, m)
                                          : fmt::format("{} / layer {}", rm.run->label, m);
      std::string points, marks;
      std::size_t n_points = 0;
      for (const PairFlip& p : rm.flips) {
        if (static_cast<std::size_t>(p.layer) != m) continue;
        const double px = sx(x_of(rm, p)), py = sy(p.top1_flip_rate);
        points += fmt::format("{}{:.1f},{:.1f}", n_points ? " " : "", px, py);
        marks += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px, py,
                             color);
        ++n_points;
      }
      if (n_points > 0) {
        out += fmt::format(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}>"
            "<title>{}</title></polyline>\n",
            points, color, dash_attr, esc(name));
        out += marks;
      }
      out += fmt::format(
          "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
          "stroke=\"{}\" stroke-width=\"2\"{}/>\n",
          lx, ly - 4, lx + 30, ly - 4, color, dash_attr);
      out += text(lx + 38, ly, n_points > 0 ? name : name + " (no pairs)");
      ly += entry_h;
    }
  }
  out += "</svg>\n";
  return out;
}

std::string load_svg(const std::vector<RunMetrics>& metrics) {
  struct Panel {
    const RunMetrics* rm;
    std::size_t run_index;
    const Load* load;
  };
  std::vector<Panel> panels;
  double ymax = 0;
  for (std::size_t ri = 0; ri < metrics.size(); ++ri) {
    for (const Load& l : metrics[ri].load) {
      panels.push_back({&metrics[ri], ri, &l});
      for (double s : l.shares) ymax = std::max(ymax, s);
      ymax = std::max(ymax, 1.0 / static_cast<double>(l.shares.size()));
    }
  }
  if (ymax <= 0) ymax = 1;
  const std::vector<double> yt = nice_ticks(0, ymax, 5);

  const double panel_w = 340, panel_h = 240, pad_left = 64, pad_right = 16, pad_top = 34,
               pad_bottom = 52, title_h = 40;
  const std::size_t cols = std::max<std::size_t>(1, std::min<std::size_t>(3, panels.size()));
  const std::size_t rows = std::max<std::size_t>(1, (panels.size() + cols - 1) / cols);
  const double width = panel_w * static_cast<double>(cols);
  const double height = title_h + panel_h * static_cast<double>(rows) + 10;

  std::string out = header(width, height);
  out += text(width / 2, 26, "Expert load at the last record (share of first choices)", "middle",
              " font-size=\"15\" font-weight=\"bold\"");
  if (panels.empty()) {
    out += text(width / 2, title_h + 40, "no routing records", "middle", " fill=\"#a00\"");
  }
  for (std::size_t i = 0; i < panels.size(); ++i) {
    const Panel& p = panels[i];
    const double ox = panel_w * static_cast<double>(i % cols);
    const double oy = title_h + panel_h * static_cast<double>(i / cols);
    const double left = ox + pad_left, right = ox + panel_w - pad_right;
    const double top = oy + pad_top, bottom = oy + panel_h - pad_bottom;
    const std::size_t n_e = p.load->shares.size();
    const Scale sy{yt.front(), yt.back(), bottom, top};
    // Experts sit at the centres of equal slots; tick labels thin out for many experts.
    const double slot = (right - left) / static_cast<double>(n_e);
    const Scale sx{0, static_cast<double>(n_e), left, right};
    out += text((left + right) / 2, oy + 18,
                fmt::format("{} / layer {} (step {})  H/log E = {:.3f}", p.rm->run->label,
                            p.load->layer, p.load->step, p.load->entropy_norm),
                "middle", " font-weight=\"bold\"");
    out += axes(sx, sy, {}, yt, "expert", i % cols == 0 ? "share" : "");
    const std::size_t every = std::max<std::size_t>(1, (n_e + 15) / 16);
    const char* color = kPalette[p.run_index % kPaletteSize];
    for (std::size_t e = 0; e < n_e; ++e) {
      const double x0 = left + slot * static_cast<double>(e);
      const double y0 = sy(p.load->shares[e]);
      out += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"{}\"><title>expert {}: {:.4f} ({} tokens)</title></rect>\n",
          x0 + slot * 0.1, y0, slot * 0.8, bottom - y0, color, e, p.load->shares[e],
          p.load->counts[e]);
      if (e % every == 0) out += text(x0 + slot / 2, bottom + 15, fmt::format("{}", e), "middle");
    }
    const double uy = sy(1.0 / static_cast<double>(n_e));
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#555\" stroke-dasharray=\"5 3\"/>\n",
        left, uy, right, uy);
    out += text(right - 2, uy - 4, "uniform 1/E", "end", " fill=\"#555\" font-size=\"10\"");
  }
  out += "</svg>\n";
  return out;
}

std::vector<std::string> write_svg_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    RM_FAIL(Io, fmt::format("{}: cannot create directory: {}", dir, ec.message()));
  }
  const std::string flu = (std::filesystem::path(dir) / "fluctuation.svg").string();
  const std::string load = (std::filesystem::path(dir) / "load.svg").string();
  write_text_file(flu, fluctuation_svg(metrics));
  write_text_file(load, load_svg(metrics));
  return {flu, load};
}

}  // namespace routemoe::trace
