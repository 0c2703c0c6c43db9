#include "framework/memory_estimate.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "framework/error.h"

namespace routemoe {

namespace {

constexpr std::int64_t kFloat = 4;  // bytes of an fp32 value (parameters, moments, activations)

// Checked size arithmetic with one label for every overflow message of the estimate.
struct Sizes {
  const char* what;
  std::int64_t mul(std::int64_t a, std::int64_t b) const { return size_mul(a, b, what); }
  std::int64_t mul(std::int64_t a, std::int64_t b, std::int64_t c) const {
    return mul(mul(a, b), c);
  }
  std::int64_t add(std::int64_t a, std::int64_t b) const { return size_add(a, b, what); }
};

// Floats the router of one MoE layer allocates for N tokens of B sequences (forward, and the
// extra of the backward), beyond the softmax gate's logits and probabilities.
std::int64_t router_floats(RouterKind r, std::int64_t B, std::int64_t N, const ModelConfig& m,
                           bool backward, const Sizes& s) {
  const std::int64_t T = m.seq_len, E = m.n_experts, d = m.d_model;
  const std::int64_t bt2 = s.mul(B, T, T);
  switch (r) {
    case RouterKind::Similarity:  // the graph S [B,T,T] and p~ [N,E]; backward: dS, dp~, dp
      return backward ? s.add(bt2, s.mul(2, N, E)) : s.add(bt2, s.mul(N, E));
    case RouterKind::Attention:  // head-averaged probabilities [B,T,T] and p~; backward dp~, dp
      return backward ? s.mul(2, N, E) : s.add(bt2, s.mul(N, E));
    case RouterKind::AC:  // scaled features and scores; backward their gradients
      return backward ? s.add(s.mul(N, d), s.mul(2, N, E)) : s.add(s.mul(2, N, d), s.mul(2, N, E));
    case RouterKind::TopK:
      break;
  }
  return 0;
}

// Floats of one pass of the model (layers/model.cpp, layers/moe.cpp, layers/attention.cpp
// allocate these from the activation arena, which is reset once per pass) over `rows`
// sequences: the forward's saved activations, plus the backward's scratch when `backward`.
std::int64_t pass_floats(const ModelConfig& m, std::int64_t rows, bool backward, bool exchanges,
                         const Sizes& s) {
  const std::int64_t T = m.seq_len, d = m.d_model, F = m.d_ff, E = m.n_experts, V = m.vocab_size;
  const std::int64_t H = m.n_heads, B = rows, N = s.mul(B, T), slots = s.mul(N, m.top_k);
  const std::int64_t Nd = s.mul(N, d), NE = s.mul(N, E), T2 = s.mul(T, T);
  // Embeddings, final LayerNorm, logits, per-token losses; backward: their gradients.
  std::int64_t total = s.add(s.mul(3, Nd), s.add(s.mul(N, V), s.mul(4, N)));
  if (backward) total = s.add(total, s.add(s.mul(N, V), s.add(s.mul(3, Nd), N)));
  const std::int64_t ex_rows = exchanges ? 2 : 0;  // slot-order copies sent and received
  std::int64_t moe_index = 0;
  for (std::int64_t l = 0; l < m.n_layers; ++l) {
    // LayerNorms, qkv, context, attention output, residuals; probabilities [B,H,T,T].
    std::int64_t block = s.add(s.add(s.mul(10, Nd), s.mul(4, N)), s.mul(B, H, T2));
    if (backward) block = s.add(block, s.add(s.mul(4, Nd), s.mul(H, T2)));
    if (!m.is_moe_block(l)) {
      block = s.add(block, s.mul(backward ? 3 : 2, N, F));
    } else {
      const RouterKind r = m.effective_router(moe_index++);
      // Gate logits and probabilities, choices, gates, slot arrays; backward: their gradients.
      block = s.add(block, s.add(s.mul(2, NE), s.mul(6, slots)));
      // Expert inputs and outputs in slot order [S,d], hidden pre/post GELU [S,F].
      block = s.add(block, s.mul(slots, s.add(s.mul(2 + ex_rows, d), s.mul(2, F))));
      block = s.add(block, router_floats(r, B, N, m, false, s));
      if (backward) {
        block = s.add(block, s.add(s.mul(2, NE), slots));
        block = s.add(block, s.mul(slots, s.add(s.mul(2 + ex_rows, d), F)));
        block = s.add(block, router_floats(r, B, N, m, true, s));
      }
    }
    total = s.add(total, block);
  }
  return total;
}

std::int64_t read_int_file(const std::string& path) {
  std::ifstream f(path);
  std::string word;
  if (!(f >> word)) return -1;
  try {
    std::size_t used = 0;
    const long long v = std::stoll(word, &used);
    return used == word.size() && v >= 0 ? v : -1;
  } catch (const std::exception&) {
    return -1;  // "max" (no limit) or not a number
  }
}

// The value (in kB) of `field` in a /proc file of "Name:   value kB" lines, as bytes; -1 if absent.
std::int64_t proc_kb(const std::string& path, const std::string& field) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream in(line.substr(field.size() + 1));
    long long kb = -1;
    if (in >> kb && kb >= 0 && kb < (INT64_MAX >> 10)) return kb * 1024;
  }
  return -1;
}

// memory.max - memory.current of this process's cgroup (v2, or v1's memory controller); -1 if
// there is no limit or it cannot be read.
std::int64_t cgroup_headroom() {
  std::string rel;
  {
    std::ifstream f("/proc/self/cgroup");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("0::", 0) == 0) rel = line.substr(3);
  }
  const std::string dirs[] = {"/sys/fs/cgroup" + rel, "/sys/fs/cgroup"};
  for (const std::string& dir : dirs) {
    const std::int64_t max = read_int_file(dir + "/memory.max");
    const std::int64_t cur = read_int_file(dir + "/memory.current");
    if (max >= 0 && cur >= 0) return std::max<std::int64_t>(0, max - cur);
  }
  const std::int64_t max = read_int_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
  const std::int64_t cur = read_int_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  if (max >= 0 && cur >= 0 && max < (std::int64_t{1} << 60)) {
    return std::max<std::int64_t>(0, max - cur);
  }
  return -1;
}

}  // namespace

MemoryEstimate estimate_memory(const RunConfig& cfg, int world, int ep) {
  RM_CHECK_KIND(
      Config, world >= 1 && ep >= 1 && world % ep == 0,
      fmt::format("cannot estimate memory for {} ranks with expert-parallel size {}", world, ep));
  cfg.model.validate();
  const ModelConfig& m = cfg.model;
  const ParamCount count = m.param_count();
  const Sizes s{"the memory estimate"};
  MemoryEstimate e;
  e.params_total = count.total();
  e.params_per_rank = s.add(count.dense, count.experts / ep);
  e.param_bytes = s.mul(e.params_per_rank, kFloat);
  e.grad_bytes = e.param_bytes;
  e.optimizer_bytes = s.mul(2, e.param_bytes);
  const std::int64_t W = world, T = m.seq_len, batch = cfg.train.batch_size;
  const bool exchanges = ep > 1;
  struct Pass {
    const char* name;
    std::int64_t rows;
    bool backward;
  };
  const Pass passes[] = {
      {"training micro-batch", batch / (W * std::max<std::int64_t>(1, cfg.train.grad_accum)), true},
      {"validation batch", batch / W, false},
      {"probe set", cfg.checkpoint.probe_tokens / T / W, false},
  };
  for (const Pass& p : passes) {
    const std::int64_t bytes =
        s.mul(pass_floats(m, std::max<std::int64_t>(1, p.rows), p.backward, exchanges, s), kFloat);
    if (bytes > e.activation_bytes) e.activation_bytes = bytes, e.activation_pass = p.name;
  }
  e.total_bytes =
      s.add(s.add(e.param_bytes, e.grad_bytes), s.add(e.optimizer_bytes, e.activation_bytes));
  return e;
}

AvailableMemory available_memory() {
  AvailableMemory a;
  a.node_bytes = proc_kb("/proc/meminfo", "MemAvailable");
  a.node_source = "MemAvailable in /proc/meminfo";
  if (a.node_bytes < 0) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) {
      a.node_bytes = static_cast<std::int64_t>(pages) * page;
      a.node_source = "available physical pages (sysconf)";
    }
  }
  const std::int64_t cgroup = cgroup_headroom();
  if (cgroup >= 0 && (a.node_bytes < 0 || cgroup < a.node_bytes)) {
    a.node_bytes = cgroup;
    a.node_source = "the cgroup memory limit";
  }
  rlimit lim{};
  if (getrlimit(RLIMIT_AS, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    const std::int64_t used = std::max<std::int64_t>(0, proc_kb("/proc/self/status", "VmSize"));
    const auto cap = static_cast<std::int64_t>(std::min<rlim_t>(lim.rlim_cur, INT64_MAX));
    a.process_bytes = std::max<std::int64_t>(0, cap - used);
  }
  return a;
}

std::string format_size(std::int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  std::size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(units)) v /= 1024.0, ++u;
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string describe(const MemoryEstimate& e) {
  return fmt::format(
      "{} parameters ({} on each rank); per rank: parameters {}, gradients {}, AdamW moments {}, "
      "activations {} ({}), total {}",
      e.params_total, e.params_per_rank, format_size(e.param_bytes), format_size(e.grad_bytes),
      format_size(e.optimizer_bytes), format_size(e.activation_bytes), e.activation_pass,
      format_size(e.total_bytes));
}

void check_memory_fits(const MemoryEstimate& e, int ranks_on_node,
                       const AvailableMemory& available) {
  const char* hint =
      "make the model or train.batch_size smaller, raise train.grad_accum, or spread the experts "
      "over more ranks (parallel.ep_size) on more nodes";
  const std::int64_t ranks = std::max(1, ranks_on_node);
  const std::int64_t node_need = size_mul(e.total_bytes, ranks, "the memory estimate");
  if (available.node_bytes >= 0 && node_need > available.node_bytes)
    RM_FAIL(
        Config,
        fmt::format("the run does not fit in memory: it needs about {} per rank x {} "
                    "rank(s) on this node = {}, but {} is available ({}). Estimate: {}. "
                    "To fit, {}",
                    format_size(e.total_bytes), ranks, format_size(node_need),
                    format_size(available.node_bytes), available.node_source, describe(e), hint));
  if (available.process_bytes >= 0 && e.total_bytes > available.process_bytes)
    RM_FAIL(Config,
            fmt::format("the run does not fit in this process's address-space limit "
                        "(ulimit -v): it needs about {} per rank, but {} is left. Estimate: "
                        "{}. To fit, {}",
                        format_size(e.total_bytes), format_size(available.process_bytes),
                        describe(e), hint));
}

}  // namespace routemoe
