// The expert exchange overlapped with computation (layers/dispatch.h, exchange_overlapped) and the
// non-blocking point-to-point calls under it (Communicator::isend / irecv / wait / test), run
// through mpiexec with 1, 2, 3 and 4 ranks (tests/mpi/CMakeLists.txt).
//
// The chunked exchange must deliver exactly the rows of the unchunked one: for a routing with
// uneven blocks and empty ones (experts no token chose, ranks that send nothing to an expert,
// a rank with no tokens at all), every owner row that compute(l) sees equals what dispatch_rows
// delivers, compute(l) runs once per local expert in order and only sees its own rows, and the
// rows that come back equal combine_rows of the same outputs, bit for bit. Every row carries
// its (source rank, slot, column) in its values, so a misplaced row cannot pass.
//
// The shared-memory transport of all_to_all_blocks (Communicator::enable_shared_memory) must
// deliver the same rows as messages for the same layouts, across a growing window and
// alternating halves, and fall back to messages when the window has no room.
//
// main(): `--expect-messages`: MPI here cannot make shared windows (the shared-memory tests then
// expect messages). `--expect-ranks N` fails unless the world has N ranks; failures on any rank
// fail all of them (the flag is all-reduced); only rank 0 prints GoogleTest's report. Exit code 77
// (ctest "skipped") when a test was skipped (the exchange tests with a single rank) and none
// failed.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/arena.h"
#include "framework/error.h"
#include "framework/rng.h"
#include "layers/dispatch.h"

namespace routemoe {
namespace {

using comm::Communicator;

std::unique_ptr<Communicator> world() {
  return comm::make_mpi_world();
}

// ---- point-to-point --------------------------------------------------------------------------

// Every rank sends every rank (itself included) three messages: two under tag 1 (which must
// arrive in order) and one of zero elements under tag 2; receives are posted after the sends on
// even ranks and before them on odd ranks.
void ring_messages(Communicator& c) {
  const int P = c.size(), me = c.rank();
  const std::int64_t n = 1000;
  std::vector<std::vector<double>> out(static_cast<std::size_t>(P)), in1(out.size()),
      in2(out.size());
  std::vector<Communicator::Request> reqs;
  auto post_recvs = [&] {
    for (int p = 0; p < P; ++p) {
      const auto i = static_cast<std::size_t>(p);
      in1[i].assign(static_cast<std::size_t>(n), -1.0);
      in2[i].assign(static_cast<std::size_t>(n + 1), -1.0);
      reqs.push_back(c.irecv(in1[i].data(), n, comm::DataType::F64, p, 1));
      reqs.push_back(c.irecv(in2[i].data(), n + 1, comm::DataType::F64, p, 1));
      reqs.push_back(c.irecv(nullptr, 0, comm::DataType::F64, p, 2));
    }
  };
  if (me % 2 == 1) post_recvs();
  for (int p = 0; p < P; ++p) {
    auto& v = out[static_cast<std::size_t>(p)];
    v.resize(static_cast<std::size_t>(2 * n + 1));
    for (std::size_t k = 0; k < v.size(); ++k) v[k] = me * 1e6 + p * 1e4 + static_cast<double>(k);
    reqs.push_back(c.isend(v.data(), n, comm::DataType::F64, p, 1));
    reqs.push_back(c.isend(v.data() + n, n + 1, comm::DataType::F64, p, 1));
    reqs.push_back(c.isend(nullptr, 0, comm::DataType::F64, p, 2));
  }
  if (me % 2 == 0) post_recvs();
  while (!c.test(reqs)) {
  }
  for (int p = 0; p < P; ++p) {
    const auto i = static_cast<std::size_t>(p);
    for (std::int64_t k = 0; k < n; ++k) {
      ASSERT_EQ(in1[i][static_cast<std::size_t>(k)], p * 1e6 + me * 1e4 + static_cast<double>(k))
          << "first message from " << p << ", element " << k;
    }
    for (std::int64_t k = 0; k <= n; ++k) {
      ASSERT_EQ(in2[i][static_cast<std::size_t>(k)],
                p * 1e6 + me * 1e4 + static_cast<double>(n + k))
          << "second message from " << p << ", element " << k;
    }
  }
}

TEST(PointToPoint, MpiMessagesMatchInOrder) {
  auto c = world();
  ring_messages(*c);
  c->barrier();
}

TEST(PointToPoint, SelfMessagesMatchInOrder) {
  auto c = comm::make_self();
  ring_messages(*c);
}

TEST(PointToPoint, SelfWaitWithoutPartnerThrows) {
  auto c = comm::make_self();
  std::vector<float> buf(4);
  const auto r = c->irecv(buf.data(), 4, comm::DataType::F32, 0, 7);
  EXPECT_FALSE(c->test(std::vector<Communicator::Request>{r}));
  EXPECT_THROW(c->wait(std::vector<Communicator::Request>{r}), Error);
  EXPECT_THROW(c->isend(buf.data(), 4, comm::DataType::F32, 1, 0), Error);   // no rank 1
  EXPECT_THROW(c->isend(buf.data(), 4, comm::DataType::F32, 0, -1), Error);  // bad tag
  const auto s = c->isend(buf.data(), 4, comm::DataType::F32, 0, 7);  // completes the receive
  c->wait(std::vector<Communicator::Request>{r, s});
}

TEST(PointToPoint, MpiRejectsBadPeerTagAndUnknownRequest) {
  auto c = world();
  std::vector<float> buf(4);
  EXPECT_THROW(c->isend(buf.data(), 4, comm::DataType::F32, c->size(), 0), Error);
  EXPECT_THROW(c->irecv(buf.data(), 4, comm::DataType::F32, 0, Communicator::kMaxTag), Error);
  EXPECT_THROW(c->wait(std::vector<Communicator::Request>{12345}), Error);
  c->barrier();
}

// ---- the overlapped exchange ------------------------------------------------------------------

struct Layout {
  std::int64_t experts;
  std::int64_t tokens;  // per rank (rank 1 has none when `empty_rank`)
  std::int64_t top_k;
  bool empty_rank;  // rank 1 routes no token at all
  int skip_expert;  // an expert no token of any rank chooses (-1: none)
  int favourite;    // an expert that gets most of rank 0's choices (uneven blocks; -1: none)
};

// Slot-order expert offsets [E + 1] of this rank's routing (k distinct experts per token).
std::vector<std::int64_t> route(const Layout& l, int rank) {
  const std::int64_t n = (l.empty_rank && rank == 1) || l.tokens == 0 ? 0 : l.tokens + 17 * rank;
  Philox rng(7, 100 + static_cast<std::uint64_t>(rank));
  std::vector<std::int64_t> counts(static_cast<std::size_t>(l.experts), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    std::vector<bool> taken(static_cast<std::size_t>(l.experts), false);
    for (std::int64_t j = 0; j < l.top_k; ++j) {
      std::int64_t e = 0;
      do {
        e = static_cast<std::int64_t>(rng.next_below(static_cast<std::uint64_t>(l.experts)));
        if (rank == 0 && l.favourite >= 0 && !taken[static_cast<std::size_t>(l.favourite)] &&
            rng.next_below(4) != 0) {
          e = l.favourite;
        }
      } while (taken[static_cast<std::size_t>(e)] || e == l.skip_expert);
      taken[static_cast<std::size_t>(e)] = true;
      ++counts[static_cast<std::size_t>(e)];
    }
  }
  std::vector<std::int64_t> offset(static_cast<std::size_t>(l.experts + 1), 0);
  for (std::int64_t e = 0; e < l.experts; ++e)
    offset[static_cast<std::size_t>(e + 1)] =
        offset[static_cast<std::size_t>(e)] + counts[static_cast<std::size_t>(e)];
  return offset;
}

// The value of column c of slot s of rank r: unique per (rank, slot, column), exact in float.
float tag_value(int r, std::int64_t s, std::int64_t c) {
  return static_cast<float>(r * 1000000 + s * 64 + c);
}

// What compute(l) makes of an owner row: depends on the row's contents and the expert.
float transform(float v, std::int64_t l) {
  return -v - static_cast<float>(l);
}

// Bit-for-bit equality of two float vectors (an empty rank's vectors have no data pointer,
// which memcmp must not see).
bool same_bytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void check_overlapped(const Layout& lay, std::int64_t width) {
  auto ep = world();
  const int me = ep->rank();
  const std::vector<std::int64_t> offset = route(lay, me);
  Arena arena("test-exchange", Device::CPU);
  const layers::DispatchPlan plan =
      layers::plan_dispatch(offset.data(), lay.experts, width, ep.get(), arena);
  const std::int64_t S = plan.slots, R = plan.owner_rows, L = plan.local_experts;
  std::vector<float> slot_in(static_cast<std::size_t>(S * width));
  for (std::int64_t s = 0; s < S; ++s)
    for (std::int64_t c = 0; c < width; ++c)
      slot_in[static_cast<std::size_t>(s * width + c)] = tag_value(me, s, c);

  // Unchunked: dispatch_rows, the transform of every row, combine_rows.
  std::vector<float> ref_owner(static_cast<std::size_t>(R * width), -1.0f);
  std::vector<float> ref_back(static_cast<std::size_t>(S * width), -1.0f);
  layers::dispatch_rows<float>(plan, *ep, slot_in.data(), ref_owner.data());
  std::vector<float> ref_out(ref_owner.size());
  for (std::int64_t l = 0; l < L; ++l)
    for (std::int64_t k = plan.local_offset[l] * width; k < plan.local_offset[l + 1] * width; ++k)
      ref_out[static_cast<std::size_t>(k)] = transform(ref_owner[static_cast<std::size_t>(k)], l);
  layers::combine_rows<float>(plan, *ep, ref_out.data(), ref_back.data());

  // Chunked: compute(l) checks that its rows have arrived complete, and only its rows.
  std::vector<float> owner_in(ref_owner.size(), -2.0f), owner_out(ref_owner.size(), -3.0f);
  std::vector<float> back(ref_back.size(), -4.0f);
  std::vector<std::int64_t> calls;
  const double compute_s = layers::exchange_overlapped<float>(
      plan, *ep, slot_in.data(), owner_in.data(), owner_out.data(), back.data(),
      [&](std::int64_t l) {
        calls.push_back(l);
        const std::int64_t b = plan.local_offset[l] * width, e = plan.local_offset[l + 1] * width;
        for (std::int64_t k = b; k < e; ++k) {
          const auto i = static_cast<std::size_t>(k);
          EXPECT_EQ(owner_in[i], ref_owner[i]) << "expert " << l << " element " << k;
          owner_out[i] = transform(owner_in[i], l);
        }
      });
  EXPECT_GE(compute_s, 0.0);
  std::vector<std::int64_t> want(static_cast<std::size_t>(L));
  for (std::int64_t l = 0; l < L; ++l) want[static_cast<std::size_t>(l)] = l;
  EXPECT_EQ(calls, want) << "compute(l) once per local expert, in order";
  EXPECT_TRUE(same_bytes(owner_in, ref_owner)) << "owner rows differ from dispatch_rows'";
  EXPECT_TRUE(same_bytes(back, ref_back)) << "rows back differ from combine_rows'";
  for (std::int64_t s = 0; s < S; ++s) {  // and they are the transformed own rows
    const std::int64_t e = std::upper_bound(offset.begin(), offset.end(), s) - offset.begin() - 1;
    const std::int64_t l = e % L;
    const bool ok = back[static_cast<std::size_t>(s * width)] == transform(tag_value(me, s, 0), l);
    EXPECT_TRUE(ok) << "slot " << s;
    if (!ok) break;
  }
  ep->barrier();
}

TEST(ExchangeOverlapped, UnevenBlocks) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  check_overlapped({4 * comm::world_size(), 300, 2, false, -1, 1}, 5);
}

TEST(ExchangeOverlapped, EmptyExpertAndEmptyRank) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  check_overlapped({2 * comm::world_size(), 120, 2, true, 1, 0}, 3);
}

TEST(ExchangeOverlapped, OneExpertPerRankWideRows) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  check_overlapped({comm::world_size(), 257, 1, false, -1, 0}, 512);
}

TEST(ExchangeOverlapped, NoTokensAnywhere) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  check_overlapped({2 * comm::world_size(), 0, 1, false, -1, -1}, 4);
}

// ---- the shared-memory transport of all_to_all_blocks -----------------------------------------

// main()'s --expect-messages: this launch's MPI cannot make shared windows (mpiexec --mca osc
// ^sm), so enable_shared_memory must say false and the exchange use messages.
bool& expect_messages() {
  static bool expect = false;
  return expect;
}

bool shared_windows_expected() {
  return !expect_messages() && comm::ranks_on_node() == comm::world_size();
}

constexpr const char* kBackingDirEnv = "OMPI_MCA_osc_sm_backing_directory";

// dispatch_rows + combine_rows of `lay` at each width in turn (growing and shrinking: the window
// grows, and successive exchanges alternate its halves), on a communicator that exchanges
// through shared memory and on one that sends messages: the rows delivered must be the same,
// bit for bit, in both directions. Returns whether the shared-memory communicator still used
// shared memory at the end.
// `backing_dir`: when set, the shared-memory directory is switched to it after the window was
// made, so that the first exchange needing a larger window finds no room.
bool check_shared_memory(const Layout& lay, const std::vector<std::int64_t>& widths,
                         const char* backing_dir = nullptr) {
  auto messages = world();
  auto shared = messages->split(0, messages->rank());
  const bool on = shared->enable_shared_memory(true);
  EXPECT_EQ(on, shared_windows_expected())
      << "shared memory is used exactly when every rank is on this node and MPI makes shared "
         "windows";
  if (backing_dir != nullptr) {
    EXPECT_EQ(setenv(kBackingDirEnv, backing_dir, 1), 0);
  }
  const int me = messages->rank();
  const std::vector<std::int64_t> offset = route(lay, me);
  for (const std::int64_t width : widths) {
    Arena a1("test-shm-msg", Device::CPU), a2("test-shm", Device::CPU);
    const layers::DispatchPlan pm =
        layers::plan_dispatch(offset.data(), lay.experts, width, messages.get(), a1);
    const layers::DispatchPlan ps =
        layers::plan_dispatch(offset.data(), lay.experts, width, shared.get(), a2);
    const std::int64_t S = pm.slots, R = pm.owner_rows;
    EXPECT_EQ(ps.owner_rows, R);
    std::vector<float> slot_in(static_cast<std::size_t>(S * width));
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t c = 0; c < width; ++c)
        slot_in[static_cast<std::size_t>(s * width + c)] = tag_value(me, s, c);
    std::vector<float> own_m(static_cast<std::size_t>(R * width), -1.0f),
        own_s(own_m.size(), -2.0f);
    layers::dispatch_rows<float>(pm, *messages, slot_in.data(), own_m.data());
    layers::dispatch_rows<float>(ps, *shared, slot_in.data(), own_s.data());
    EXPECT_TRUE(same_bytes(own_s, own_m)) << "owner rows differ at width " << width;
    for (float& v : own_m) v = transform(v, 3);
    std::vector<float> back_m(slot_in.size(), -3.0f), back_s(slot_in.size(), -4.0f);
    layers::combine_rows<float>(pm, *messages, own_m.data(), back_m.data());
    layers::combine_rows<float>(ps, *shared, own_m.data(), back_s.data());
    EXPECT_TRUE(same_bytes(back_s, back_m)) << "rows back differ at width " << width;
    for (std::int64_t k = 0; k < S * width; ++k) {
      const auto i = static_cast<std::size_t>(k);
      if (back_m[i] != transform(slot_in[i], 3)) {
        ADD_FAILURE() << "slot element " << k << " did not make the round trip at width " << width;
        break;
      }
    }
  }
  const bool still = shared->shared_memory();
  if (backing_dir != nullptr) unsetenv(kBackingDirEnv);
  shared->release();
  messages->barrier();
  return still;
}

TEST(SharedMemoryExchange, UnevenBlocksGrowingAndShrinking) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  const bool on = check_shared_memory({4 * comm::world_size(), 300, 2, false, -1, 1},
                                      {5, 1, 64, 512, 64, 7, 300, 3, 2048});
  EXPECT_EQ(on, shared_windows_expected());
}

TEST(SharedMemoryExchange, EmptyExpertEmptyRankNoTokens) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  check_shared_memory({2 * comm::world_size(), 120, 2, true, 1, 0}, {3, 3, 17});
  check_shared_memory({2 * comm::world_size(), 0, 1, false, -1, -1}, {4, 4});
  check_shared_memory({comm::world_size(), 257, 1, false, -1, 0}, {512, 1});
}

// No room in the shared-memory directory for a larger window (here: a directory that does not
// exist, from after the first window on): every rank falls back to messages together, and the
// rows are still right.
TEST(SharedMemoryExchange, FallsBackToMessagesWithoutRoom) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  if (!shared_windows_expected()) GTEST_SKIP() << "no shared windows to fall back from";
  const bool on = check_shared_memory({4 * comm::world_size(), 300, 2, false, -1, 1}, {8, 2048},
                                      "/nonexistent/routemoe-test");
  EXPECT_FALSE(on) << "the exchange should have fallen back to messages";
}

// On ranks other than 0: no report, but every failure, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] FAILED %s at %s:%d\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_ = "(outside a test)";
};

}  // namespace
}  // namespace routemoe

int main(int argc, char** argv) {
  namespace comm = routemoe::comm;
  int expect = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) != "--expect-messages") continue;
    routemoe::expect_messages() = true;
    for (int j = i; j + 1 <= argc; ++j) argv[j] = argv[j + 1];
    argc -= 1;
    break;
  }
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--expect-ranks") continue;
    expect = std::atoi(argv[i + 1]);
    for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
    argc -= 2;
    break;
  }
  try {
    comm::init_mpi(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_exchange: %s\n", e.what());
    return 1;
  }
  const int rank = comm::world_rank(), size = comm::world_size();
  if (expect > 0 && expect != size) {
    if (rank == 0) std::fprintf(stderr, "test_exchange: expected %d ranks, got %d\n", expect, size);
    comm::finalize_mpi();
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new routemoe::RankFailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int skipped = ::testing::UnitTest::GetInstance()->skipped_test_count() > 0 ? 1 : 0;
  {
    auto w = comm::make_mpi_world();
    failed = comm::all_reduce_value(*w, failed, comm::ReduceOp::Max);
    skipped = comm::all_reduce_value(*w, skipped, comm::ReduceOp::Max);
  }
  comm::finalize_mpi();
  return failed != 0 ? 1 : (skipped != 0 ? 77 : 0);  // ctest SKIP_RETURN_CODE 77
}
