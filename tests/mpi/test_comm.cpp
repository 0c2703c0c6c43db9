// Multi-rank tests of the communicator layer (comm/communicator.h), run through mpiexec with 1, 2
// and 4 ranks (tests/mpi/CMakeLists.txt). The same suite runs on the MPI world communicator and
// on the single-process backend.
//
// Every payload identifies itself: an all-to-all-v element encodes (source rank, destination
// rank, expert, row, column), so each receiver checks bit for bit that it got exactly what was
// addressed to it, in order, at the right displacement, and that nothing outside the blocks was
// written.
//
// main(): `--expect-ranks N` makes the binary fail ("expected N ranks, got M") when the world has
// another size; only rank 0 prints GoogleTest's report (other ranks print their failures), and
// the failure flag is all-reduced so that a failure on any rank fails every rank. The exit code
// is 1 if any test failed on any rank, else 77 (ctest SKIP_RETURN_CODE) if any test was skipped
// on any rank (the NCCL cases with fewer GPUs than ranks), else 0: ctest never reports a run
// with skipped tests as passed, and a failure is never hidden behind a skip.
//
// Collectives must stay matched across ranks, so the tests use EXPECT (never ASSERT) between
// collectives, and do their checks after the exchanges.

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/error.h"

#if ROUTEMOE_HAVE_NCCL
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/context.h"
#endif

namespace routemoe::comm {
namespace {

#if ROUTEMOE_HAVE_NCCL
// 0 only without a device or a driver; a broken CUDA installation throws (the test fails).
int cuda_devices() {
  return cuda::device_count();
}

// Test adapter: presents an NCCL communicator (device buffers) through host buffers, so that the
// whole suite runs on it. Each call copies its host arguments to fresh device buffers, runs the
// NCCL collective and copies the results back.
class HostStaged final : public Communicator {
 public:
  explicit HostStaged(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return inner_->backend(); }

  void all_reduce(void* buf, std::int64_t count, DataType type, ReduceOp op) override {
    Dev d(buf, count, type);
    inner_->all_reduce(d.ptr, count, type, op);
    d.back(buf);
  }
  void all_gather(const void* send, void* recv, std::int64_t count, DataType type) override {
    Dev s(send, count, type), r(recv, count * size(), type);
    inner_->all_gather(s.ptr, r.ptr, count, type);
    r.back(recv);
  }
  void all_to_all(const void* send, void* recv, std::int64_t count, DataType type) override {
    Dev s(send, count * size(), type), r(recv, count * size(), type);
    inner_->all_to_all(s.ptr, r.ptr, count, type);
    r.back(recv);
  }
  void all_to_all_v(const void* send, const std::int64_t* sc, const std::int64_t* sd, void* recv,
                    const std::int64_t* rc, const std::int64_t* rd, DataType type) override {
    std::int64_t s_end = 0, r_end = 0;
    for (int r = 0; r < size(); ++r) {
      s_end = std::max(s_end, sc[r] > 0 ? sd[r] + sc[r] : 0);
      r_end = std::max(r_end, rc[r] > 0 ? rd[r] + rc[r] : 0);
    }
    Dev s(send, s_end, type), r(recv, r_end, type);
    inner_->all_to_all_v(s.ptr, sc, sd, r.ptr, rc, rd, type);
    r.back(recv);
  }
  void broadcast(void* buf, std::int64_t count, DataType type, int root) override {
    Dev d(buf, count, type);
    inner_->broadcast(d.ptr, count, type, root);
    d.back(buf);
  }
  void barrier() override { inner_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) const override {
    return std::make_unique<HostStaged>(inner_->split(color, key));
  }
  void release() override { inner_->release(); }

 private:
  // A device copy of `count` host elements (none when count <= 0 or host is null).
  struct Dev {
    Dev(const void* host, std::int64_t count, DataType type)
        : bytes(count > 0 && host ? static_cast<std::size_t>(count) * datatype_size(type) : 0) {
      if (bytes == 0) return;
      RM_CUDA_CHECK(cudaMalloc(&ptr, bytes));
      RM_CUDA_CHECK(cudaMemcpy(ptr, host, bytes, cudaMemcpyHostToDevice));
    }
    ~Dev() {
      if (ptr) cudaFree(ptr);
    }
    void back(void* host) const {
      if (bytes) RM_CUDA_CHECK(cudaMemcpy(host, ptr, bytes, cudaMemcpyDeviceToHost));
    }
    std::size_t bytes;
    void* ptr = nullptr;
  };
  std::unique_ptr<Communicator> inner_;
};
#endif

std::unique_ptr<Communicator> make_backend(const std::string& name) {
  if (name == "mpi") return make_mpi_world();
#if ROUTEMOE_HAVE_NCCL
  if (name == "nccl") {
    auto control = make_mpi_world();
    return std::make_unique<HostStaged>(make_nccl(*control, world_rank() % cuda_devices()));
  }
#endif
  return make_self();
}

class CommTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
#if ROUTEMOE_HAVE_NCCL
    // NCCL needs one GPU per rank of a node (the same on every rank, so all of them skip).
    if (GetParam() == "nccl" && cuda_devices() < world_size())
      GTEST_SKIP() << "NCCL needs " << world_size() << " GPUs, " << cuda_devices() << " visible";
#endif
    comm_ = make_backend(GetParam());
  }
  Communicator& comm() {
    return *comm_;
  }
  std::unique_ptr<Communicator> comm_;
};

#if ROUTEMOE_HAVE_NCCL
INSTANTIATE_TEST_SUITE_P(Backends, CommTest, ::testing::Values("mpi", "self", "nccl"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });
#else
INSTANTIATE_TEST_SUITE_P(Backends, CommTest, ::testing::Values("mpi", "self"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });
#endif

template <typename T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Counts mismatches and remembers the first one, so that one EXPECT reports a whole buffer.
struct Mismatches {
  std::int64_t count = 0;
  std::string first;
  template <typename T>
  void check(const T& got, const T& want, const std::string& where) {
    if (same_bits(got, want)) return;
    if (count++ == 0) {
      std::ostringstream s;
      s << where << ": got " << +got << ", want " << +want;
      first = s.str();
    }
  }
};

// ------------------------------------------------------------------------------------------
// Basic properties

TEST_P(CommTest, Identity) {
  EXPECT_EQ(comm().backend(), GetParam());
  EXPECT_EQ(comm().device(), Device::CPU);
  if (GetParam() == "self") {  // mpi and nccl span the world
    EXPECT_EQ(comm().size(), 1);
    EXPECT_EQ(comm().rank(), 0);
  } else {
    EXPECT_EQ(comm().size(), world_size());
    EXPECT_EQ(comm().rank(), world_rank());
  }
  EXPECT_GE(comm().rank(), 0);
  EXPECT_LT(comm().rank(), comm().size());
  comm().barrier();
  comm().barrier();
}

TEST(CommDatatype, Sizes) {
  EXPECT_EQ(datatype_size(DataType::F32), 4u);
  EXPECT_EQ(datatype_size(DataType::F64), 8u);
  EXPECT_EQ(datatype_size(DataType::I32), 4u);
  EXPECT_EQ(datatype_size(DataType::I64), 8u);
  EXPECT_EQ(datatype_size(DataType::U8), 1u);
}

// ------------------------------------------------------------------------------------------
// all_to_all_v with self-identifying payloads

// tokens(src, expert): how many rows rank `src` routes to `expert` (< kMaxRows).
using TokenFn = std::function<std::int64_t(int src, int expert, int world, int epr)>;
constexpr std::int64_t kMaxRows = 64;

struct Scenario {
  std::string name;
  TokenFn tokens;
};

std::vector<Scenario> scenarios() {
  return {
      {"all_zero", [](int, int, int, int) -> std::int64_t { return 0; }},
      {"some_zero",
       [](int s, int e, int, int) -> std::int64_t {
         return (s + e) % 3 == 0 ? 0 : 1 + (s * 7 + e * 3) % 5;
       }},
      {"all_to_rank0",
       [](int s, int e, int, int epr) -> std::int64_t { return e < epr ? 3 + s : 0; }},
      {"all_to_last_rank",
       [](int s, int e, int w, int epr) -> std::int64_t {
         return e >= (w - 1) * epr ? 2 + 2 * s : 0;
       }},
      {"to_next_rank_only",
       [](int s, int e, int w, int epr) -> std::int64_t { return e / epr == (s + 1) % w ? 5 : 0; }},
      {"uneven",
       [](int s, int e, int, int) -> std::int64_t { return (s * 13 + e * 7) % 11 * (s + 1); }},
  };
}

// Mixed-radix code of (src, dst, expert, row, col): unique, and below 2^24 for the sizes used
// here, so it is exact in float too.
template <typename T>
T encode(int src, int dst, int expert, std::int64_t row, int col, int world, int experts,
         int width) {
  const std::int64_t v =
      (((static_cast<std::int64_t>(src) * world + dst) * experts + expert) * kMaxRows + row) *
          width +
      col;
  return static_cast<T>(v);
}

template <typename T>
void run_all_to_all_v(Communicator& c, const Scenario& sc, int epr, int width, bool reverse_send) {
  const int w = c.size();
  const int me = c.rank();
  const int experts = w * epr;
  SCOPED_TRACE(sc.name + " experts/rank=" + std::to_string(epr) +
               " width=" + std::to_string(width) + (reverse_send ? " reverse-send-layout" : ""));
  static_assert(sizeof(T) >= 4);
  ASSERT_LT(static_cast<std::int64_t>(w) * w * experts * kMaxRows * width, 1 << 24);

  // Send buffer: the block for rank dst holds, for each expert dst owns, tokens(me, e) rows of
  // `width` columns. With reverse_send the blocks are laid out from the last rank to the first.
  std::vector<std::int64_t> send_counts(w), send_displs(w);
  std::vector<T> send;
  for (int k = 0; k < w; ++k) {
    const int dst = reverse_send ? w - 1 - k : k;
    send_displs[dst] = static_cast<std::int64_t>(send.size());
    for (int e = dst * epr; e < (dst + 1) * epr; ++e) {
      const std::int64_t rows = sc.tokens(me, e, w, epr);
      EXPECT_LT(rows, kMaxRows);
      for (std::int64_t row = 0; row < rows; ++row)
        for (int col = 0; col < width; ++col)
          send.push_back(encode<T>(me, dst, e, row, col, w, experts, width));
    }
    send_counts[dst] = static_cast<std::int64_t>(send.size()) - send_displs[dst];
  }

  // Receive counts as the dispatcher gets them: an all-to-all of the send counts. They must
  // agree with what this rank computes from the scenario.
  std::vector<std::int64_t> recv_counts(w, -1);
  c.all_to_all(send_counts.data(), recv_counts.data(), 1, DataType::I64);
  for (int src = 0; src < w; ++src) {
    std::int64_t want = 0;
    for (int e = me * epr; e < (me + 1) * epr; ++e) want += sc.tokens(src, e, w, epr) * width;
    EXPECT_EQ(recv_counts[src], want) << "count from rank " << src;
    recv_counts[src] = want;  // keep the exchange well-formed even if the check failed
  }

  // Receive buffer with one sentinel element before each block and one at the end, which must
  // survive untouched (displacements are honoured, blocks do not overrun).
  std::vector<std::int64_t> recv_displs(w);
  std::int64_t total = 0;
  for (int src = 0; src < w; ++src) {
    total += 1;
    recv_displs[src] = total;
    total += recv_counts[src];
  }
  total += 1;
  const T sentinel = static_cast<T>(-7);
  std::vector<T> recv(static_cast<std::size_t>(total), sentinel);

  all_to_all_v(c, send.data(), send_counts.data(), send_displs.data(), recv.data(),
               recv_counts.data(), recv_displs.data());

  Mismatches bad;
  std::vector<char> covered(recv.size(), 0);
  for (int src = 0; src < w; ++src) {
    std::int64_t i = recv_displs[src];
    for (int e = me * epr; e < (me + 1) * epr; ++e) {
      const std::int64_t rows = sc.tokens(src, e, w, epr);
      for (std::int64_t row = 0; row < rows; ++row)
        for (int col = 0; col < width; ++col, ++i) {
          covered[static_cast<std::size_t>(i)] = 1;
          bad.check(recv[static_cast<std::size_t>(i)],
                    encode<T>(src, me, e, row, col, w, experts, width),
                    "from rank " + std::to_string(src) + " expert " + std::to_string(e) + " row " +
                        std::to_string(row) + " col " + std::to_string(col));
        }
    }
    EXPECT_EQ(i, recv_displs[src] + recv_counts[src]);
  }
  for (std::size_t i = 0; i < recv.size(); ++i)
    if (!covered[i]) bad.check(recv[i], sentinel, "gap element " + std::to_string(i));
  EXPECT_EQ(bad.count, 0) << "rank " << me << ": " << bad.count << " wrong elements; first "
                          << bad.first;
}

TEST_P(CommTest, AllToAllVScenarios) {
  for (const Scenario& sc : scenarios())
    for (int epr : {1, 3})
      for (int width : {1, 4})
        for (bool reverse : {false, true}) {
          run_all_to_all_v<std::int64_t>(comm(), sc, epr, width, reverse);
          run_all_to_all_v<float>(comm(), sc, epr, width, reverse);
        }
}

// all_to_all_blocks: 3 blocks per peer with counts (src + 2 dst + k) % 4 (some empty), laid
// out in reverse order on the sending side and interleaved on the receiving side; every value
// encodes (source, destination, block, element) and is checked bit for bit.
TEST_P(CommTest, AllToAllBlocksScattered) {
  Communicator& c = comm();
  const int n = c.size(), me = c.rank();
  constexpr int kBlocks = 3;
  auto count = [](int src, int dst, int k) {
    return static_cast<std::int64_t>((src + 2 * dst + k) % 4);
  };
  auto value = [](int src, int dst, int k, std::int64_t i) {
    return static_cast<std::int64_t>(((src * 64 + dst) * 8 + k) * 1000 + i);
  };
  using Block = Communicator::Block;
  std::vector<Block> sb(static_cast<std::size_t>(n * kBlocks)), rb(sb.size());
  std::vector<std::int64_t> sf(static_cast<std::size_t>(n) + 1), rf(sf.size());
  std::int64_t stotal = 0, rtotal = 0;
  for (int r = 0; r < n; ++r) {
    sf[static_cast<std::size_t>(r)] = r * kBlocks;
    rf[static_cast<std::size_t>(r)] = r * kBlocks;
    for (int k = 0; k < kBlocks; ++k) {
      stotal += count(me, r, k);
      rtotal += count(r, me, k);
    }
  }
  sf[static_cast<std::size_t>(n)] = rf[static_cast<std::size_t>(n)] = n * kBlocks;
  std::vector<std::int64_t> send(static_cast<std::size_t>(stotal)),
      recv(static_cast<std::size_t>(rtotal), -1);
  std::int64_t off = stotal;  // reverse layout on the sending side
  for (int r = 0; r < n; ++r) {
    for (int k = 0; k < kBlocks; ++k) {
      const std::int64_t cnt = count(me, r, k);
      off -= cnt;
      sb[static_cast<std::size_t>(r * kBlocks + k)] = {off, cnt};
      for (std::int64_t i = 0; i < cnt; ++i)
        send[static_cast<std::size_t>(off + i)] = value(me, r, k, i);
    }
  }
  off = 0;  // receiving side: block k of every source together (k-major)
  for (int k = 0; k < kBlocks; ++k) {
    for (int r = 0; r < n; ++r) {
      const std::int64_t cnt = count(r, me, k);
      rb[static_cast<std::size_t>(r * kBlocks + k)] = {off, cnt};
      off += cnt;
    }
  }
  c.all_to_all_blocks(send.data(), sb.data(), sf.data(), recv.data(), rb.data(), rf.data(),
                      DataType::I64);
  for (int r = 0; r < n; ++r) {
    for (int k = 0; k < kBlocks; ++k) {
      const Block& blk = rb[static_cast<std::size_t>(r * kBlocks + k)];
      for (std::int64_t i = 0; i < blk.count; ++i) {
        ASSERT_EQ(recv[static_cast<std::size_t>(blk.displ + i)], value(r, me, k, i))
            << "from rank " << r << " block " << k << " element " << i;
      }
    }
  }
}

TEST_P(CommTest, AllToAllVOtherTypes) {
  for (const Scenario& sc : scenarios()) {
    run_all_to_all_v<double>(comm(), sc, 2, 3, false);
    run_all_to_all_v<std::int32_t>(comm(), sc, 2, 3, true);
  }
}

// Messages far above the eager limit (shared-memory single copy / rendezvous paths), of a
// different length for every pair.
TEST_P(CommTest, AllToAllVLarge) {
  const int w = comm().size();
  const int me = comm().rank();
  auto len = [](int src, int dst) -> std::int64_t { return (1 << 17) + 7 * src + 3 * dst; };
  auto code = [](int src, int dst, std::int64_t i) -> std::int64_t {
    return (static_cast<std::int64_t>(src) << 48) | (static_cast<std::int64_t>(dst) << 40) | i;
  };
  std::vector<std::int64_t> sc(w), sd(w), rc(w), rd(w);
  std::int64_t st = 0, rt = 0;
  for (int r = 0; r < w; ++r) {
    sc[r] = len(me, r);
    sd[r] = st;
    st += sc[r];
    rc[r] = len(r, me);
    rd[r] = rt;
    rt += rc[r];
  }
  std::vector<std::int64_t> send(static_cast<std::size_t>(st)),
      recv(static_cast<std::size_t>(rt), -1);
  for (int r = 0; r < w; ++r)
    for (std::int64_t i = 0; i < sc[r]; ++i) send[sd[r] + i] = code(me, r, i);
  all_to_all_v(comm(), send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data());
  Mismatches bad;
  for (int r = 0; r < w; ++r)
    for (std::int64_t i = 0; i < rc[r]; ++i)
      bad.check(recv[rd[r] + i], code(r, me, i), "from rank " + std::to_string(r));
  EXPECT_EQ(bad.count, 0) << bad.first;

  std::vector<double> big(1 << 18);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i % 1000) + me;
  all_reduce(comm(), std::span<double>(big));
  Mismatches bad_sum;
  for (std::size_t i = 0; i < big.size(); ++i)
    bad_sum.check(big[i], static_cast<double>(i % 1000) * w + w * (w - 1) / 2.0, "all_reduce");
  EXPECT_EQ(bad_sum.count, 0) << bad_sum.first;
}

// ------------------------------------------------------------------------------------------
// all_to_all, all_gather, broadcast, all_reduce

std::int64_t code3(int a, int b, int i) {
  return (static_cast<std::int64_t>(a) << 40) | (static_cast<std::int64_t>(b) << 20) | i;
}

TEST_P(CommTest, AllToAll) {
  const int w = comm().size();
  const int me = comm().rank();
  for (int count : {0, 1, 3}) {
    std::vector<std::int64_t> send(static_cast<std::size_t>(w * count)), recv(send.size(), -1);
    for (int dst = 0; dst < w; ++dst)
      for (int i = 0; i < count; ++i) send[dst * count + i] = code3(me, dst, i);
    comm().all_to_all(send.data(), recv.data(), count, DataType::I64);
    Mismatches bad;
    for (int src = 0; src < w; ++src)
      for (int i = 0; i < count; ++i)
        bad.check(recv[src * count + i], code3(src, me, i), "from " + std::to_string(src));
    EXPECT_EQ(bad.count, 0) << "count " << count << ": " << bad.first;
  }
}

TEST_P(CommTest, AllGather) {
  const int w = comm().size();
  const int me = comm().rank();
  for (int count : {0, 1, 5}) {
    std::vector<std::int64_t> send(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) send[i] = code3(me, 7, i);
    std::vector<std::int64_t> recv(static_cast<std::size_t>(w * count), -1);
    comm().all_gather(send.data(), recv.data(), count, DataType::I64);
    Mismatches bad;
    for (int r = 0; r < w; ++r)
      for (int i = 0; i < count; ++i)
        bad.check(recv[r * count + i], code3(r, 7, i), "block " + std::to_string(r));
    EXPECT_EQ(bad.count, 0) << "count " << count << ": " << bad.first;
  }
  // Doubles keep their bits.
  const double mine = 1.0 / (3.0 + me);
  std::vector<double> all(static_cast<std::size_t>(w), 0.0);
  comm().all_gather(&mine, all.data(), 1, DataType::F64);
  for (int r = 0; r < w; ++r) {
    const double want = 1.0 / (3.0 + r);
    EXPECT_TRUE(same_bits(all[r], want)) << "rank " << r;
  }
}

TEST_P(CommTest, Broadcast) {
  const int w = comm().size();
  const int me = comm().rank();
  for (int root = 0; root < w; ++root) {
    std::vector<std::int64_t> buf(6, -1);
    if (me == root)
      for (int i = 0; i < 6; ++i) buf[i] = code3(root, 3, i);
    comm().broadcast(buf.data(), 6, DataType::I64, root);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(buf[i], code3(root, 3, i)) << "root " << root;

    std::uint8_t bytes[5] = {0, 0, 0, 0, 0};
    if (me == root)
      for (int i = 0; i < 5; ++i) bytes[i] = static_cast<std::uint8_t>(200 + root + i);
    comm().broadcast(bytes, 5, DataType::U8, root);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(bytes[i], 200 + root + i) << "root " << root;
  }
  comm().broadcast(nullptr, 0, DataType::F32, 0);
  EXPECT_THROW(comm().broadcast(nullptr, 0, DataType::F32, w), Error);
  EXPECT_THROW(comm().broadcast(nullptr, 0, DataType::F32, -1), Error);
}

// Small integers (exact in float), of both signs, different on every rank.
std::int64_t reduce_input(int r, int i) {
  return (i % 2 ? -1 : 1) * ((r * 37 + i * 11) % 23) + r;
}

template <typename T>
void check_all_reduce(Communicator& c) {
  const int w = c.size();
  const int me = c.rank();
  constexpr int n = 9;
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    std::vector<T> buf(n);
    for (int i = 0; i < n; ++i) buf[i] = static_cast<T>(reduce_input(me, i));
    all_reduce(c, std::span<T>(buf), op);
    for (int i = 0; i < n; ++i) {
      T want = static_cast<T>(reduce_input(0, i));
      for (int r = 1; r < w; ++r) {
        const T v = static_cast<T>(reduce_input(r, i));
        want = op == ReduceOp::Sum   ? static_cast<T>(want + v)
               : op == ReduceOp::Max ? std::max(want, v)
                                     : std::min(want, v);
      }
      EXPECT_TRUE(same_bits(buf[i], want))
          << "op " << static_cast<int>(op) << " i " << i << ": got " << buf[i] << " want " << want;
    }
  }
  EXPECT_EQ(all_reduce_value(c, static_cast<T>(me + 1)), static_cast<T>(w * (w + 1) / 2));
  EXPECT_EQ(all_reduce_value(c, static_cast<T>(me), ReduceOp::Max), static_cast<T>(w - 1));
  EXPECT_EQ(all_reduce_value(c, static_cast<T>(me), ReduceOp::Min), static_cast<T>(0));
  c.all_reduce(nullptr, 0, datatype_of<T>(), ReduceOp::Sum);
}

TEST_P(CommTest, AllReduceF32) {
  check_all_reduce<float>(comm());
}
TEST_P(CommTest, AllReduceF64) {
  check_all_reduce<double>(comm());
}
TEST_P(CommTest, AllReduceI64) {
  check_all_reduce<std::int64_t>(comm());
}
TEST_P(CommTest, AllReduceI32) {
  check_all_reduce<std::int32_t>(comm());
}

// ------------------------------------------------------------------------------------------
// split and process groups

std::vector<int> gather_world_ranks(Communicator& c, int my_world_rank) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(c.size()), -1);
  const std::int32_t mine = my_world_rank;
  c.all_gather(&mine, out.data(), 1, DataType::I32);
  return {out.begin(), out.end()};
}

TEST_P(CommTest, SplitByParityReversed) {
  const int w = comm().size();
  const int me = comm().rank();
  // Same parity, ordered by descending rank (key = -rank).
  std::unique_ptr<Communicator> sub = comm().split(me % 2, -me);
  std::vector<int> want;
  for (int r = w - 1; r >= 0; --r)
    if (r % 2 == me % 2) want.push_back(r);
  EXPECT_EQ(sub->backend(), comm().backend());
  EXPECT_EQ(sub->size(), static_cast<int>(want.size()));
  EXPECT_EQ(sub->rank(), static_cast<int>(std::find(want.begin(), want.end(), me) - want.begin()));
  EXPECT_EQ(gather_world_ranks(*sub, me), want);
  EXPECT_EQ(all_reduce_value<std::int64_t>(*sub, 1), static_cast<std::int64_t>(want.size()));
  sub->release();
  sub->release();  // idempotent
  if (GetParam() != "self") {
    EXPECT_THROW(sub->barrier(), Error) << "used after release()";
  }
}

TEST_P(CommTest, ProcessGroups) {
  const int w = comm().size();
  const int me = comm().rank();
  for (int ep : {1, 2, 4}) {
    if (w % ep != 0) continue;
    SCOPED_TRACE("ep_size " + std::to_string(ep));
    ProcessGroups g = ProcessGroups::create(make_backend(GetParam()), ep);
    EXPECT_EQ(g.ep_size, ep);
    EXPECT_EQ(g.world->size(), w);
    EXPECT_EQ(g.world->rank(), me);
    EXPECT_EQ(g.ep->size(), ep);
    EXPECT_EQ(g.ep->rank(), me % ep);
    EXPECT_EQ(g.edp->size(), w / ep);
    EXPECT_EQ(g.edp->rank(), me / ep);
    // ep group: the contiguous block [g*ep, (g+1)*ep); edp group: ranks strided by ep.
    std::vector<int> ep_members(static_cast<std::size_t>(ep)), edp_members;
    std::iota(ep_members.begin(), ep_members.end(), me / ep * ep);
    for (int r = me % ep; r < w; r += ep) edp_members.push_back(r);
    EXPECT_EQ(gather_world_ranks(*g.ep, me), ep_members);
    EXPECT_EQ(gather_world_ranks(*g.edp, me), edp_members);
    // Collectives stay within the group.
    EXPECT_EQ(all_reduce_value<std::int64_t>(*g.ep, me),
              std::accumulate(ep_members.begin(), ep_members.end(), std::int64_t{0}));
    EXPECT_EQ(all_reduce_value<std::int64_t>(*g.edp, me),
              std::accumulate(edp_members.begin(), edp_members.end(), std::int64_t{0}));
    g.release();
  }
}

TEST_P(CommTest, ProcessGroupsRejectBadEpSize) {
  const int w = comm().size();
  for (int ep : {0, -1, w + 1, 3}) {
    if (ep > 0 && w % ep == 0) continue;
    try {
      ProcessGroups::create(make_backend(GetParam()), ep);
      ADD_FAILURE() << "ep_size " << ep << " accepted for world size " << w;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Config) << e.what();
      EXPECT_NE(std::string(e.what()).find("ep_size"), std::string::npos) << e.what();
    }
  }
}

// ------------------------------------------------------------------------------------------
// Agreed failures (comm/agree.h): a step that fails on some ranks makes every rank throw the same
// error at the same point, so no rank is left waiting in the next collective.

TEST_P(CommTest, RunAgreedFailureOnOneRank) {
  const int w = comm().size();
  const int last = w - 1;
  // Nobody fails: no error, and the step ran on every rank.
  int ran = 0;
  EXPECT_NO_THROW(run_agreed(comm(), "step A", [&] { ran = 1; }));
  EXPECT_EQ(ran, 1);
  // Only the last rank fails (an I/O error): every rank throws Error(Io) naming it and its cause.
  for (int round = 0; round < 2; ++round) {
    try {
      run_agreed(comm(), "checkpoint x.h5", [&] {
        if (comm().rank() == last) RM_FAIL(Io, "x.h5.tmp: cannot write: No space left on device");
      });
      ADD_FAILURE() << "rank " << comm().rank() << ": no error although rank " << last << " failed";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
      EXPECT_EQ(e.detail(), "checkpoint x.h5: failed on rank " + std::to_string(last) +
                                ": x.h5.tmp: cannot write: No space left on device");
    }
  }
  // Rank 0 fails with a non-routemoe exception and the last rank with a Data error: both are
  // named, in rank order; the kind is the first failed rank's (Check for a std::exception).
  try {
    run_agreed(comm(), "step B", [&] {
      if (comm().rank() == 0) throw std::runtime_error("zero");
      if (comm().rank() == last) RM_FAIL(Data, "last");
    });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Check) << e.what();
    const std::string want =
        w == 1 ? "step B: failed on rank 0: zero"
               : "step B: failed on rank 0: zero; rank " + std::to_string(last) + ": last";
    EXPECT_EQ(e.detail(), want);
  }
  comm().barrier();  // still in step
}

// ------------------------------------------------------------------------------------------
// Argument errors (raised on every rank before any communication, so nothing hangs)

// MPI only: its counts are int (the self backend has no such limit).
TEST(CommMpi, CountsAboveIntMaxRejected) {
  const std::unique_ptr<Communicator> owned = make_backend("mpi");
  auto comm = [&]() -> Communicator& { return *owned; };
  const int w = comm().size();
  const std::int64_t big = static_cast<std::int64_t>(INT_MAX) + 1;
  std::vector<std::int64_t> zeros(w, 0), counts(w, 0), displs(w, 0);
  counts[0] = big;
  // Every rank passes the bad count, so every rank throws before calling MPI.
  auto expect_check = [&](auto&& call, const char* what) {
    try {
      call();
      ADD_FAILURE() << what << " accepted a count above INT_MAX";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Check) << e.what();
      EXPECT_NE(std::string(e.what()).find("INT_MAX"), std::string::npos) << e.what();
      EXPECT_EQ(e.rank(), world_rank());
    }
  };
  std::int64_t dummy = 0;
  expect_check(
      [&] {
        comm().all_to_all_v(&dummy, counts.data(), zeros.data(), &dummy, zeros.data(), zeros.data(),
                            DataType::I64);
      },
      "all_to_all_v send_counts");
  expect_check(
      [&] {
        comm().all_to_all_v(&dummy, zeros.data(), zeros.data(), &dummy, counts.data(), zeros.data(),
                            DataType::I64);
      },
      "all_to_all_v recv_counts");
  displs[w - 1] = big;
  expect_check(
      [&] {
        comm().all_to_all_v(&dummy, zeros.data(), displs.data(), &dummy, zeros.data(), zeros.data(),
                            DataType::I64);
      },
      "all_to_all_v send_displs");
  expect_check([&] { comm().all_reduce(&dummy, big, DataType::I64, ReduceOp::Sum); }, "all_reduce");
  expect_check([&] { comm().all_gather(&dummy, &dummy, big, DataType::I64); }, "all_gather");
  expect_check([&] { comm().all_to_all(&dummy, &dummy, big, DataType::I64); }, "all_to_all");
  expect_check([&] { comm().broadcast(&dummy, big, DataType::I64, 0); }, "broadcast");
  comm().barrier();  // still in step
}

TEST_P(CommTest, NegativeCountsRejected) {
  const int w = comm().size();
  std::vector<std::int64_t> zeros(w, 0), counts(w, 0);
  counts[w - 1] = -1;
  std::int64_t dummy = 0;
  EXPECT_THROW(comm().all_to_all_v(&dummy, counts.data(), zeros.data(), &dummy, counts.data(),
                                   zeros.data(), DataType::I64),
               Error);
  EXPECT_THROW(comm().all_reduce(&dummy, -1, DataType::I64, ReduceOp::Sum), Error);
  comm().barrier();
}

TEST(SelfComm, MismatchedSelfExchangeRejected) {
  auto c = make_self();
  std::int64_t send = 1, recv = 0, one = 1, two = 2, zero = 0;
  EXPECT_THROW(c->all_to_all_v(&send, &one, &zero, &recv, &two, &zero, DataType::I64), Error);
  EXPECT_EQ(recv, 0);
}

// ------------------------------------------------------------------------------------------
// main

// On ranks other than 0: no report, but every failure, prefixed with the rank. (The test name
// is remembered in OnTestStart: UnitTest::current_test_info() would take the mutex that
// AddTestPartResult holds while it calls OnTestPartResult.)
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

// Removes `--expect-ranks N` / `--expect-ranks=N` from argv; returns N, 0 when absent, -1 when
// malformed.
int take_expect_ranks(int* argc, char** argv) {
  int expect = 0;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string a = argv[i];
    std::string value;
    if (a == "--expect-ranks" && i + 1 < *argc) {
      value = argv[++i];
    } else if (a.rfind("--expect-ranks=", 0) == 0) {
      value = a.substr(std::strlen("--expect-ranks="));
    } else if (a == "--expect-ranks") {
      return -1;
    } else {
      argv[out++] = argv[i];
      continue;
    }
    char* end = nullptr;
    const long v = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || v <= 0 || v > INT_MAX) return -1;
    expect = static_cast<int>(v);
  }
  *argc = out;
  argv[out] = nullptr;
  return expect;
}

}  // namespace
}  // namespace routemoe::comm

int main(int argc, char** argv) {
  namespace comm = routemoe::comm;
  const int expect = comm::take_expect_ranks(&argc, argv);
  // --require-gpu: exit 77 (ctest SKIP_RETURN_CODE) unless the NCCL backend is built and a GPU
  // is visible, so that a GPU-only run reports "skipped" rather than "passed" without one.
  bool require_gpu = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) != "--require-gpu") continue;
    require_gpu = true;
    for (int j = i; j < argc; ++j) argv[j] = argv[j + 1];
    --argc;
    break;
  }
#if ROUTEMOE_HAVE_NCCL
  const bool have_gpu = comm::cuda_devices() > 0;
#else
  const bool have_gpu = false;
#endif
  if (require_gpu && !have_gpu) {
    std::printf("test_comm: no NCCL backend or no visible GPU; skipped\n");
    return 77;
  }
  try {
    comm::init_mpi(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_comm: %s\n", e.what());
    return 1;
  }
  const int rank = comm::world_rank();
  const int size = comm::world_size();
  if (expect < 0) {
    if (rank == 0) std::fprintf(stderr, "test_comm: --expect-ranks needs a positive integer\n");
    comm::finalize_mpi();
    return 2;
  }
  if (expect > 0 && expect != size) {
    if (rank == 0) std::fprintf(stderr, "test_comm: expected %d ranks, got %d\n", expect, size);
    comm::finalize_mpi();
    return 1;
  }

  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new comm::RankFailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int skipped = ::testing::UnitTest::GetInstance()->skipped_test_count();

  // Any rank's failure fails every rank (and mpiexec); a skip on any rank makes every rank
  // report skipped.
  int any_failed = failed, max_skipped = skipped;
  if (MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS ||
      MPI_Allreduce(&skipped, &max_skipped, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
    any_failed = 1;
  if (rank == 0 && any_failed && !failed)
    std::fprintf(stderr, "test_comm: tests failed on another rank (see [rank N] lines)\n");
  if (rank == 0) {
    if (any_failed) {
      std::printf("test_comm: %d rank(s), FAILED\n", size);
    } else if (max_skipped > 0) {
      std::printf("test_comm: %d rank(s), %d test(s) skipped; reporting skipped (77)\n", size,
                  max_skipped);
    } else {
      std::printf("test_comm: %d rank(s), all passed\n", size);
    }
  }
  try {
    comm::finalize_mpi();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_comm: %s\n", e.what());
    return 1;
  }
  return any_failed ? 1 : max_skipped > 0 ? 77 : 0;
}
