// `routemoe bench alltoall`: the expert-parallel exchange of one MoE layer (dispatch + combine,
// layers/dispatch.h) against a bare MPI_Alltoallv moving the same bytes, in the same run.
//
// Every rank routes `tokens` tokens to `top_k` distinct experts drawn uniformly from a seeded
// Philox stream (random, balanced in expectation), lays the slots out as the MoE layer does
// (sorted by global expert, then by token) and times, per iteration:
//   ours: arena reset, plan_dispatch (count all-to-all + block layout), dispatch_rows (one block
//         all-to-all straight into expert-major order), combine_rows (the reverse exchange), on
//         the ep communicator as training makes it: through shared memory when every rank is on
//         one node (Communicator::enable_shared_memory), else one message per block;
//   messages: the same on a communicator without shared memory (only timed when ours uses it,
//         so that both transports are compared in the same run);
//   bare: two MPI_Alltoallv calls (there and back) with the same per-peer counts.
// Iterations alternate ours/bare after a barrier; each rank takes the median of its iterations
// and the figure is the maximum of those medians over the ranks (the engine's max_over_ranks).
// With --d-ff F the "experts" are real FFNs (d -> F -> d, random weights, ops::grouped_ffn_forward)
// and three more variants are timed: the experts alone on rows already in place, the blocking
// path (dispatch_rows, all experts, combine_rows) and the overlapped one
// (layers::exchange_overlapped: expert l computes while the rows of l + 1 arrive and the outputs
// of l - 1 leave); the overlap line compares the overlapped time with exchange + experts.

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/arena.h"
#include "framework/bench/benchmarks.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "framework/rng.h"
#include "framework/timer.h"
#include "layers/dispatch.h"

namespace routemoe::bench {

namespace {

struct AlltoallOptions {
  std::vector<std::int64_t> tokens{4096};
  std::vector<std::int64_t> d{512};
  std::int64_t top_k = 2;
  std::int64_t experts = 8;
  std::uint64_t seed = 1;
  std::int64_t d_ff = 0;  // > 0: also time the exchange around real expert FFNs (overlap)
  std::vector<double> allreduce_mib;  // all-reduce sizes to time as well (latency-bandwidth fit)
};

// The routing of one rank: slots sorted by global expert, then by token (as the MoE layer
// builds them for a dropless layer).
struct Routing {
  std::vector<std::int64_t> expert_offset;  // [E + 1]
  std::vector<std::int32_t> slot_token;     // [S]
  std::vector<std::int32_t> slot_pos;       // [S]
  std::vector<std::int32_t> slot_expert;    // [S]
};

Routing make_routing(std::int64_t n, std::int64_t k, std::int64_t e, std::uint64_t seed, int rank) {
  Philox rng(seed, 1000 + static_cast<std::uint64_t>(rank));
  std::vector<std::int32_t> choice(static_cast<std::size_t>(n * k));
  std::vector<std::int32_t> pool(static_cast<std::size_t>(e));
  for (std::int64_t i = 0; i < n; ++i) {
    std::iota(pool.begin(), pool.end(), 0);
    for (std::int64_t j = 0; j < k; ++j) {  // partial Fisher-Yates: k distinct experts
      const auto pick =
          static_cast<std::int64_t>(rng.next_below(static_cast<std::uint64_t>(e - j)));
      std::swap(pool[static_cast<std::size_t>(j)], pool[static_cast<std::size_t>(j + pick)]);
      choice[static_cast<std::size_t>(i * k + j)] = pool[static_cast<std::size_t>(j)];
    }
  }
  Routing r;
  r.expert_offset.assign(static_cast<std::size_t>(e + 1), 0);
  for (std::int32_t c : choice) ++r.expert_offset[static_cast<std::size_t>(c) + 1];
  for (std::int64_t x = 0; x < e; ++x) {
    r.expert_offset[static_cast<std::size_t>(x + 1)] +=
        r.expert_offset[static_cast<std::size_t>(x)];
  }
  const std::size_t s = choice.size();
  r.slot_token.resize(s);
  r.slot_pos.resize(s);
  r.slot_expert.resize(s);
  std::vector<std::int64_t> next(r.expert_offset.begin(), r.expert_offset.end() - 1);
  for (std::int64_t pos = 0; pos < n * k; ++pos) {  // counting sort: by expert, then token
    const std::int32_t c = choice[static_cast<std::size_t>(pos)];
    const auto slot = static_cast<std::size_t>(next[static_cast<std::size_t>(c)]++);
    r.slot_token[slot] = static_cast<std::int32_t>(pos / k);
    r.slot_pos[slot] = static_cast<std::int32_t>(pos);
    r.slot_expert[slot] = c;
  }
  return r;
}

// Figures of one case, each the maximum over ranks of the per-rank statistics (seconds). With
// --d-ff: the experts' computation alone, and exchange + experts blocking (one exchange each way
// around all experts) and overlapped (exchange_overlapped).
enum Fig {
  kOurs,
  kMessages,
  kBare,
  kPlan,
  kDispatch,
  kCombine,
  kCompute,
  kSequential,
  kOverlapped,
  kFigs
};

// Random expert FFNs over the owner rows of a plan (the MoE layer's experts' forward).
struct Experts {
  std::int64_t d = 0, f = 0, local = 0;
  std::vector<float> w1, b1, w2, b2, h_pre;
  Experts(std::int64_t d_, std::int64_t f_, std::int64_t local_, std::int64_t max_rows, int rank)
      : d(d_), f(f_), local(local_) {
    Philox rng(99, 3000 + static_cast<std::uint64_t>(rank));
    auto fill = [&](std::vector<float>& v, std::int64_t n, float scale) {
      v.resize(static_cast<std::size_t>(n));
      for (float& x : v) x = scale * (rng.next_uniform() - 0.5f);
    };
    fill(w1, local * f * d, 0.1f);
    fill(b1, local * f, 0.1f);
    fill(w2, local * d * f, 0.1f);
    fill(b2, local * d, 0.1f);
    h_pre.resize(static_cast<std::size_t>(std::max<std::int64_t>(max_rows, 1) * f));
  }
  // Local experts [l0, l0 + n) of `plan` on owner rows `in` -> `out`.
  void run(const layers::DispatchPlan& plan, std::int64_t l0, std::int64_t n, const float* in,
           float* out) {
    ops::grouped_ffn_forward<float>(Exec::cpu(), in, w1.data() + l0 * f * d, b1.data() + l0 * f,
                                    w2.data() + l0 * d * f, b2.data() + l0 * d, h_pre.data(), out,
                                    plan.local_offset + l0, n, d, f);
  }
};

struct CaseResult {
  std::int64_t tokens, d;
  Stats fig[kFigs];
  double bytes_per_rank;  // bytes sent per rank per iteration (both exchanges, mean over ranks)
  std::int64_t min_rows, max_rows;  // rows received per rank for its experts (min, max over ranks)
};

CaseResult run_case(const AlltoallOptions& o, std::int64_t n, std::int64_t d,
                    comm::ProcessGroups& groups, comm::Communicator* msg_ep,
                    const Schedule& schedule) {
  comm::Communicator& ep = *groups.ep;
  const int rank = groups.world->rank();
  const std::int64_t E = o.experts;
  const std::int64_t S = n * o.top_k;
  const Routing routing = make_routing(n, o.top_k, E, o.seed, rank);

  // Slot-order expert inputs; column 0 carries the global expert id for the correctness check.
  std::vector<float> x_in(static_cast<std::size_t>(S * d));
  Philox fill(o.seed, 2000 + static_cast<std::uint64_t>(rank));
  for (float& v : x_in) v = fill.next_uniform() - 0.5f;
  for (std::int64_t s = 0; s < S; ++s) {
    x_in[static_cast<std::size_t>(s * d)] =
        static_cast<float>(routing.slot_expert[static_cast<std::size_t>(s)]);
  }
  std::vector<float> y_out(x_in.size());
  std::vector<std::int64_t> expert_offset = routing.expert_offset;
  layers::DispatchPlan c;
  Arena arena("bench-alltoall", Device::CPU);
  float* ex_in = nullptr;
  // One pass of the real code path; ex_in stays valid until the next arena reset.
  auto exchange = [&](comm::Communicator& via, double* plan_s, double* dispatch_s,
                      double* combine_s) {
    Timer t;
    arena.reset();
    c = layers::plan_dispatch(expert_offset.data(), E, d, &via, arena);
    const double t_plan = t.seconds();
    ex_in = alloc_array<float>(arena, c.owner_rows * d);
    layers::dispatch_rows<float>(c, via, x_in.data(), ex_in);
    const double t_dispatch = t.seconds();
    layers::combine_rows<float>(c, via, ex_in, y_out.data());  // identity "experts"
    const double t_all = t.seconds();
    if (plan_s != nullptr) {
      *plan_s = t_plan;
      *dispatch_s = t_dispatch - t_plan;
      *combine_s = t_all - t_dispatch;
    }
    return t_all;
  };
  auto ours = [&](double* plan_s, double* dispatch_s, double* combine_s) {
    return exchange(ep, plan_s, dispatch_s, combine_s);
  };

  // Correctness of the paths being timed: owner rows are expert-major (column 0 = the expert of
  // the block) and the round trip returns every slot's row unchanged.
  for (comm::Communicator* via : {&ep, msg_ep}) {
    if (via == nullptr) continue;
    std::fill(y_out.begin(), y_out.end(), 0.0f);
    exchange(*via, nullptr, nullptr, nullptr);
    const std::int64_t first_expert = ep.rank() * c.local_experts;
    for (std::int64_t l = 0; l < c.local_experts; ++l) {
      for (std::int64_t row = c.local_offset[l]; row < c.local_offset[l + 1]; ++row) {
        RM_CHECK(
            ex_in[row * d] == static_cast<float>(first_expert + l),
            fmt::format("bench alltoall: owner row {} is not of expert {}", row, first_expert + l));
      }
    }
    RM_CHECK(std::equal(x_in.begin(), x_in.end(), y_out.begin()),
             "bench alltoall: dispatch + combine did not return the rows unchanged");
  }

  // The bare exchange: same per-peer element counts, taken from the plan.
  const int P = ep.size();
  std::vector<int> sc(static_cast<std::size_t>(P)), sd(static_cast<std::size_t>(P));
  std::vector<int> rc(static_cast<std::size_t>(P)), rd(static_cast<std::size_t>(P));
  int so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    const auto i = static_cast<std::size_t>(p);
    std::int64_t send = 0, recv = 0;
    for (std::int64_t b = c.block_first[p]; b < c.block_first[p + 1]; ++b) {
      send += c.slot_blocks[b].count;
      recv += c.owner_blocks[b].count;
    }
    sc[i] = static_cast<int>(send);
    sd[i] = so;
    so += sc[i];
    rc[i] = static_cast<int>(recv);
    rd[i] = ro;
    ro += rc[i];
  }
  const std::int64_t R = c.owner_rows;
  std::vector<float> bare_recv(static_cast<std::size_t>(R * d));
  std::vector<float> bare_back(x_in.size());
  auto bare = [&]() {
    Timer t;
    RM_MPI_CHECK(MPI_Alltoallv(x_in.data(), sc.data(), sd.data(), MPI_FLOAT, bare_recv.data(),
                               rc.data(), rd.data(), MPI_FLOAT, MPI_COMM_WORLD));
    RM_MPI_CHECK(MPI_Alltoallv(bare_recv.data(), rc.data(), rd.data(), MPI_FLOAT, bare_back.data(),
                               sc.data(), sd.data(), MPI_FLOAT, MPI_COMM_WORLD));
    return t.seconds();
  };
  bare();
  RM_CHECK(std::equal(x_in.begin(), x_in.end(), bare_back.begin()),
           "bench alltoall: bare round trip did not return the rows unchanged");

  // With --d-ff: real expert FFNs between the two exchanges, blocking and overlapped.
  std::unique_ptr<Experts> experts;
  std::vector<float> owner_in, owner_out, y_seq, y_ovl;
  auto sequential = [&]() {
    Timer t;
    arena.reset();
    c = layers::plan_dispatch(expert_offset.data(), E, d, &ep, arena);
    float* in = alloc_array<float>(arena, c.owner_rows * d);
    layers::dispatch_rows<float>(c, ep, x_in.data(), in);
    experts->run(c, 0, c.local_experts, in, owner_out.data());
    layers::combine_rows<float>(c, ep, owner_out.data(), y_seq.data());
    return t.seconds();
  };
  auto overlapped = [&]() {
    Timer t;
    arena.reset();
    c = layers::plan_dispatch(expert_offset.data(), E, d, &ep, arena);
    float* in = alloc_array<float>(arena, c.owner_rows * d);
    layers::exchange_overlapped<float>(
        c, ep, x_in.data(), in, owner_out.data(), y_ovl.data(),
        [&](std::int64_t l) { experts->run(c, l, 1, in, owner_out.data()); });
    return t.seconds();
  };
  auto compute = [&]() {  // the experts alone, on rows already in place
    Timer t;
    experts->run(c, 0, c.local_experts, owner_in.data(), owner_out.data());
    return t.seconds();
  };
  if (o.d_ff > 0) {
    experts = std::make_unique<Experts>(d, o.d_ff, c.local_experts, R, rank);
    owner_in.assign(static_cast<std::size_t>(R * d), 0.0f);
    owner_out.assign(owner_in.size(), 0.0f);
    y_seq.assign(x_in.size(), 0.0f);
    y_ovl.assign(x_in.size(), 1.0f);
    layers::dispatch_rows<float>(c, ep, x_in.data(), owner_in.data());
    sequential();
    overlapped();
    RM_CHECK(std::equal(y_seq.begin(), y_seq.end(), y_ovl.begin()),
             "bench alltoall: the overlapped exchange gave other rows than the blocking one");
  }

  // Each iteration runs every variant once, after a barrier each, starting with a different one
  // each time so that drift in the machine's load hits them alike.
  std::vector<std::pair<Fig, std::function<double()>>> variants = {{kOurs, [&] { return 0.0; }},
                                                                   {kBare, bare}};
  if (msg_ep != nullptr) {
    variants.emplace_back(kMessages, [&] { return exchange(*msg_ep, nullptr, nullptr, nullptr); });
  }
  if (o.d_ff > 0) {
    variants.emplace_back(kCompute, compute);
    variants.emplace_back(kSequential, sequential);
    variants.emplace_back(kOverlapped, overlapped);
  }
  std::vector<double> times[kFigs];
  run_iterations(schedule, [&](int it, bool timed) {
    double plan_s = 0, dispatch_s = 0, combine_s = 0;
    double t[kFigs] = {};
    const std::size_t nv = variants.size();
    for (std::size_t k = 0; k < nv; ++k) {
      const auto& [fig, run] = variants[(k + static_cast<std::size_t>(it)) % nv];
      groups.world->barrier();
      t[fig] = fig == kOurs ? ours(&plan_s, &dispatch_s, &combine_s) : run();
    }
    if (!timed) return;
    t[kPlan] = plan_s;
    t[kDispatch] = dispatch_s;
    t[kCombine] = combine_s;
    for (int f = 0; f < kFigs; ++f) times[f].push_back(t[f]);
  });

  CaseResult r{};
  r.tokens = n;
  r.d = d;
  for (int f = 0; f < kFigs; ++f) r.fig[f] = summarize(times[f]);
  max_over_ranks(*groups.world, r.fig);
  double bytes = static_cast<double>((S + R) * d) * sizeof(float);
  groups.world->all_reduce(&bytes, 1, comm::DataType::F64, comm::ReduceOp::Sum);
  r.bytes_per_rank = bytes / groups.world->size();
  r.min_rows = comm::all_reduce_value<std::int64_t>(*groups.world, R, comm::ReduceOp::Min);
  r.max_rows = comm::all_reduce_value<std::int64_t>(*groups.world, R, comm::ReduceOp::Max);
  return r;
}

// The overlap line: the exchange around real experts, overlapped, against the exchange alone
// plus the experts alone (what they cost in sequence) and against the blocking exchange around
// the same experts.
void print_overlap(const AlltoallOptions& o, const CaseResult& r, int ranks,
                   const std::string& transport) {
  const double ovl = r.fig[kOverlapped].median, seq = r.fig[kSequential].median;
  const double exch = r.fig[kOurs].median, comp = r.fig[kCompute].median;
  print_case(
      CaseLine("alltoall", "case",
               fmt::format("n{}_d{}_k{}_e{}_ff{}", r.tokens, r.d, o.top_k, o.experts, o.d_ff))
          .field("ranks", std::to_string(ranks))
          .figure("overlapped", ovl * 1e3, 3, "ms")
          .figure("blocking", seq * 1e3, 3, "ms")
          .figure("exchange", exch * 1e3, 3, "ms")
          .figure("experts", comp * 1e3, 3, "ms")
          .ratio(ovl / (exch + comp), 3, "overlapped/serial time"));
  fmt::print(
      "  where: serial = exchange + experts, each timed alone; overlapped/blocking = {:.3f}; "
      "experts = the local expert FFNs (d_ff {}) on their "
      "rows without any exchange; exchange = plan + dispatch + combine alone (as above); "
      "blocking and exchange use {}, overlapped uses messages (what training runs: "
      "{})\n",
      ovl / seq, o.d_ff, transport,
      transport == "messages" ? "overlapped" : "blocking, through shared memory");
}

// One all-reduce (sum, fp32) of `mib` MiB over the world, as reduce_gradients does it for one
// tensor: the all-reduce term of a latency-bandwidth model of the step (docs/performance.md).
void time_allreduce(double mib, comm::ProcessGroups& groups, const Schedule& schedule, Context& ctx,
                    bool lead) {
  const auto n = static_cast<std::int64_t>(mib * (1 << 20) / sizeof(float));
  std::vector<float> buf(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)), 1.0f);
  std::vector<double> t;
  run_iterations(schedule, [&](int, bool timed) {
    groups.world->barrier();
    Timer tm;
    groups.world->all_reduce(buf.data(), n, comm::DataType::F32, comm::ReduceOp::Sum);
    if (timed) t.push_back(tm.seconds());
  });
  const Stats st = max_over_ranks(*groups.world, summarize(t));
  if (!lead) return;
  const double bytes = static_cast<double>(n) * sizeof(float);
  print_case(
      CaseLine("alltoall", "case", fmt::format("allreduce_{}B", static_cast<long long>(bytes)))
          .field("ranks", std::to_string(groups.world->size()))
          .figure("time", st.median * 1e3, 3, "ms")
          .figure("algbw", bytes / st.median * 1e-9, 2, "GB/s"));
  ctx.json().add_case().str("case", "allreduce").num("bytes", bytes).stats_s("allreduce", st);
}

void run(const AlltoallOptions& o, Context& ctx) {
  const int W = ctx.size();
  RM_CHECK_KIND(
      Config, o.experts % W == 0,
      fmt::format("--experts {} must be divisible by the number of ranks {}", o.experts, W));
  RM_CHECK_KIND(Config, o.top_k <= o.experts,
                fmt::format("--top-k {} exceeds --experts {}", o.top_k, o.experts));
  for (std::int64_t n : o.tokens) {
    for (std::int64_t d : o.d) {
      RM_CHECK_KIND(
          Config, n * o.top_k * d <= std::int64_t{INT32_MAX},
          fmt::format("--tokens {} x --top-k {} x --d {} is over 2^31 elements", n, o.top_k, d));
    }
  }
  comm::ProcessGroups& groups = ctx.groups(W);  // ep group = world
  const Schedule schedule = ctx.schedule();
  // The ep group exchanges through shared memory when its ranks share a node; then the same
  // exchange over messages is timed too, on a communicator of its own.
  const std::string transport = groups.ep->shared_memory() ? "shared-memory" : "messages";
  std::unique_ptr<comm::Communicator> msg_ep;
  if (groups.ep->shared_memory()) msg_ep = groups.world->split(0, groups.world->rank());
  const bool lead = ctx.lead();
  if (lead) {
    fmt::print(
        "routemoe bench alltoall: {} ranks (ep group = world), {} experts, top-{}, fp32 rows, "
        "{} threads/rank; {} warm-up + {} timed iterations; figure = max over ranks of the "
        "median iteration\n",
        W, o.experts, o.top_k, ctx.threads(), schedule.warmup, schedule.iters);
    std::fflush(stdout);
  }
  for (std::int64_t n : o.tokens) {
    for (std::int64_t d : o.d) {
      const CaseResult r = run_case(o, n, d, groups, msg_ep.get(), schedule);
      if (!lead) continue;
      const double ours = r.fig[kOurs].median, bare = r.fig[kBare].median;
      print_case(
          CaseLine("alltoall", "case", fmt::format("n{}_d{}_k{}_e{}", n, d, o.top_k, o.experts))
              .field("ranks", std::to_string(W))
              .field("transport", transport)
              .figure("ours", ours * 1e3, 3, "ms")
              .figure("bare", bare * 1e3, 3, "ms")
              .figure("ours", r.bytes_per_rank / ours * 1e-9, 2, "GB/s")
              .figure("bare", r.bytes_per_rank / bare * 1e-9, 2, "GB/s")
              .ratio(ours / bare, 3, "ours/bare time"));
      fmt::print(
          "  where: plan {:.3f} ms (counts all-to-all + block layout), dispatch {:.3f} ms, "
          "combine {:.3f} ms; {:.1f} MB sent/rank/iter, rows per owner {}..{}\n",
          r.fig[kPlan].median * 1e3, r.fig[kDispatch].median * 1e3, r.fig[kCombine].median * 1e3,
          r.bytes_per_rank * 1e-6, r.min_rows, r.max_rows);
      if (msg_ep != nullptr) {
        const double msgs = r.fig[kMessages].median;
        fmt::print(
            "  messages: the same exchange as MPI messages (one per block) {:.3f} ms, "
            "messages/bare = {:.3f}, ours/messages = {:.3f}\n",
            msgs * 1e3, msgs / bare, ours / msgs);
      }
      if (o.d_ff > 0) print_overlap(o, r, W, transport);
      std::fflush(stdout);
      ctx.json()
          .add_case()
          .integer("tokens", r.tokens)
          .integer("d", r.d)
          .integer("top_k", o.top_k)
          .integer("experts", o.experts)
          .integer("ranks", W)
          .stats_s("ours", r.fig[kOurs])
          .stats_s("bare", r.fig[kBare])
          .num("ratio", ours / bare)
          .str("transport", transport)
          .stats_s("messages", r.fig[kMessages])
          .stats_s("plan", r.fig[kPlan])
          .stats_s("dispatch", r.fig[kDispatch])
          .stats_s("combine", r.fig[kCombine])
          .num("bytes_per_rank", r.bytes_per_rank)
          .integer("min_rows", r.min_rows)
          .integer("max_rows", r.max_rows)
          .integer("d_ff", o.d_ff)
          .stats_s("compute", r.fig[kCompute])
          .stats_s("sequential", r.fig[kSequential])
          .stats_s("overlapped", r.fig[kOverlapped]);
    }
  }
  for (const double mib : o.allreduce_mib) {
    time_allreduce(mib, groups, schedule, ctx, lead);
  }
  if (msg_ep != nullptr) msg_ep->release();
  ctx.json().header().integer("ranks", W).integer("threads", ctx.threads());
}

}  // namespace

Benchmark alltoall_benchmark() {
  Benchmark b;
  b.name = "alltoall";
  b.description =
      "expert-parallel dispatch + combine (the MoE layer's exchange) vs a bare MPI_Alltoallv of "
      "the same bytes; run under mpirun with >= 2 ranks";
  b.ranks = Ranks::TwoOrMore;
  b.defaults.warmup = 5;
  b.defaults.iters = 30;
  b.setup = [](CLI::App& cmd) {
    auto o = std::make_shared<AlltoallOptions>();
    cmd.add_option("--tokens", o->tokens,
                   "tokens per rank (several, comma-separated: one case each)")
        ->delimiter(',')
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 24))
        ->capture_default_str();
    cmd.add_option("--d", o->d, "row width d_model (several, comma-separated: one case each)")
        ->delimiter(',')
        ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 16))
        ->capture_default_str();
    cmd.add_option("--top-k", o->top_k, "experts per token")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    cmd.add_option("--experts", o->experts, "experts E (divisible by the number of ranks)")
        ->check(CLI::Range(1, 4096))
        ->capture_default_str();
    cmd.add_option("--seed", o->seed, "routing seed")->capture_default_str();
    cmd.add_option("--d-ff", o->d_ff,
                   "> 0: also time dispatch + expert FFNs of this hidden width + combine, "
                   "blocking and overlapped (chunked by expert), against exchange + experts "
                   "alone")
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 16))
        ->capture_default_str();
    cmd.add_option("--allreduce-mib", o->allreduce_mib,
                   "also time an fp32 all-reduce (sum) over the world of these sizes in MiB "
                   "(comma-separated), as the gradient reduction does per tensor")
        ->delimiter(',')
        ->check(CLI::Range(0.0, 4096.0));
    return [o](Context& ctx) { run(*o, ctx); };
  };
  return b;
}

}  // namespace routemoe::bench
