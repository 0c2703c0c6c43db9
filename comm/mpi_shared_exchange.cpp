#include "comm/mpi_shared_exchange.h"

#include <fmt/format.h>
#include <sys/statvfs.h>

#include <cstdlib>
#include <cstring>

#include "comm/mpi_runtime.h"
#include "framework/error.h"

namespace routemoe::comm::detail {

namespace {

constexpr std::int64_t kAlign = 64;  // a cache line: every peer's region starts on one
constexpr std::int64_t kGrain = std::int64_t{1} << 20;        // halves grow in MiB
constexpr std::int64_t kSpareBytes = std::int64_t{64} << 20;  // left free in the backing directory

std::int64_t round_up(std::int64_t v, std::int64_t to) {
  return (v + to - 1) / to * to;
}

// Where Open MPI's osc/sm places the backing files of shared windows.
std::string backing_directory() {
  const char* dir = std::getenv("OMPI_MCA_osc_sm_backing_directory");
  return dir != nullptr && *dir != '\0' ? dir : "/dev/shm";
}

}  // namespace

bool SharedBlockExchange::one_node(MPI_Comm comm) {
  int rank = 0, size = 0;
  RM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  RM_MPI_CHECK(MPI_Comm_size(comm, &size));
  MPI_Comm node = MPI_COMM_NULL;
  RM_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int node_size = 0;
  RM_MPI_CHECK(MPI_Comm_size(node, &node_size));
  RM_MPI_CHECK(MPI_Comm_free(&node));
  int all = node_size == size ? 1 : 0;
  RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, comm));
  return all == 1;
}

SharedBlockExchange::SharedBlockExchange(MPI_Comm comm, int rank, int size)
    : comm_(comm), rank_(rank), size_(size), segment_(static_cast<std::size_t>(size), nullptr) {}

std::int64_t SharedBlockExchange::packed_bytes(const Communicator::Block* send_blocks,
                                               const std::int64_t* send_first,
                                               std::size_t esize) const {
  std::int64_t bytes = round_up(size_ * static_cast<std::int64_t>(sizeof(std::int64_t)), kAlign);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    std::int64_t peer = 0;
    for (std::int64_t b = send_first[r]; b < send_first[r + 1]; ++b) {
      peer += send_blocks[b].count * static_cast<std::int64_t>(esize);
    }
    bytes += round_up(peer, kAlign);
  }
  return bytes;
}

void SharedBlockExchange::pack(const void* send, const Communicator::Block* send_blocks,
                               const std::int64_t* send_first, std::size_t esize) {
  char* half = half_of(rank_);
  const auto* src = static_cast<const char*>(send);
  std::int64_t pos = round_up(size_ * static_cast<std::int64_t>(sizeof(std::int64_t)), kAlign);
  for (int r = 0; r < size_; ++r) {
    const std::int64_t start = r == rank_ ? 0 : pos;
    std::memcpy(half + r * static_cast<std::int64_t>(sizeof(std::int64_t)), &start, sizeof start);
    if (r == rank_) continue;
    for (std::int64_t b = send_first[r]; b < send_first[r + 1]; ++b) {
      const auto bytes = static_cast<std::size_t>(send_blocks[b].count) * esize;
      if (bytes == 0) continue;
      std::memcpy(half + pos, src + static_cast<std::size_t>(send_blocks[b].displ) * esize, bytes);
      pos += static_cast<std::int64_t>(bytes);
    }
    pos = round_up(pos, kAlign);
  }
}

bool SharedBlockExchange::exchange(const void* send, const Communicator::Block* send_blocks,
                                   const std::int64_t* send_first, void* recv,
                                   const Communicator::Block* recv_blocks,
                                   const std::int64_t* recv_first, std::size_t esize,
                                   std::string& why) {
  const std::int64_t need = packed_bytes(send_blocks, send_first, esize);
  if (need <= half_) {
    pack(send, send_blocks, send_first, esize);
    RM_MPI_CHECK(MPI_Win_sync(win_));
  }
  // The synchronisation: every rank has packed (or found its half too small).
  std::int64_t most = need;
  RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_INT64_T, MPI_MAX, comm_));
  if (most > half_) {
    if (!grow(round_up(most + most / 4, kGrain), why)) return false;
    pack(send, send_blocks, send_first, esize);
    RM_MPI_CHECK(MPI_Win_sync(win_));
    RM_MPI_CHECK(MPI_Barrier(comm_));
  }
  RM_MPI_CHECK(MPI_Win_sync(win_));
  auto* dst = static_cast<char*>(recv);
  // This rank's own blocks: straight from the send buffer (the k-th block to itself is its
  // k-th receive block from itself).
  const auto* own = static_cast<const char*>(send);
  for (std::int64_t k = 0; k < recv_first[rank_ + 1] - recv_first[rank_]; ++k) {
    const Communicator::Block& rb = recv_blocks[recv_first[rank_] + k];
    const Communicator::Block& sb = send_blocks[send_first[rank_] + k];
    RM_CHECK(rb.count == sb.count,
             fmt::format("shared-memory exchange: block {} to itself has {} elements sent and {} "
                         "received",
                         k, sb.count, rb.count));
    if (rb.count == 0) continue;
    std::memcpy(dst + static_cast<std::size_t>(rb.displ) * esize,
                own + static_cast<std::size_t>(sb.displ) * esize,
                static_cast<std::size_t>(rb.count) * esize);
  }
  for (int k = 1; k < size_; ++k) {  // start with the next rank: spreads the load
    const int r = (rank_ + k) % size_;
    const char* half = half_of(r);
    std::int64_t start = 0;
    std::memcpy(&start, half + rank_ * static_cast<std::int64_t>(sizeof(std::int64_t)),
                sizeof start);
    const char* src = half + start;
    for (std::int64_t b = recv_first[r]; b < recv_first[r + 1]; ++b) {
      const auto bytes = static_cast<std::size_t>(recv_blocks[b].count) * esize;
      if (bytes == 0) continue;
      std::memcpy(dst + static_cast<std::size_t>(recv_blocks[b].displ) * esize, src, bytes);
      src += bytes;
    }
  }
  parity_ ^= 1;
  return true;
}

bool SharedBlockExchange::prepare(std::string& why) {
  return grow(kGrain, why);
}

bool SharedBlockExchange::grow(std::int64_t half, std::string& why) {
  release();
  const std::string dir = backing_directory();
  // Every rank of the communicator maps its two halves from files in the same directory.
  const std::int64_t total = 2 * half * size_;
  struct statvfs fs {};
  std::int64_t free_bytes = -1;
  if (statvfs(dir.c_str(), &fs) == 0) {
    free_bytes = static_cast<std::int64_t>(fs.f_bavail) * static_cast<std::int64_t>(fs.f_frsize);
  }
  int ok = free_bytes >= total + kSpareBytes ? 1 : 0;
  RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm_));
  if (ok == 0) {
    why = free_bytes < 0
              ? fmt::format("cannot read the free space of {} (the shared-memory directory)", dir)
              : fmt::format("{} has {} MiB free, the exchange needs {} MiB there", dir,
                            free_bytes >> 20, (total + kSpareBytes) >> 20);
    return false;
  }
  MPI_Info info = MPI_INFO_NULL;
  RM_MPI_CHECK(MPI_Info_create(&info));
  // Each rank's segment on its own pages (first touched by its owner when packing).
  RM_MPI_CHECK(MPI_Info_set(info, "alloc_shared_noncontig", "true"));
  char* mine = nullptr;
  win_ = MPI_WIN_NULL;
  const int rc =
      MPI_Win_allocate_shared(static_cast<MPI_Aint>(2 * half), 1, info, comm_, &mine, &win_);
  MPI_Info_free(&info);
  // An MPI without shared windows (Open MPI with its osc/sm component left out, say) fails
  // here on every rank alike: then the exchange falls back to messages.
  int made = rc == MPI_SUCCESS ? 1 : 0;
  RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &made, 1, MPI_INT, MPI_MIN, comm_));
  if (made == 0) {
    RM_CHECK_KIND(Mpi, rc != MPI_SUCCESS,
                  "MPI_Win_allocate_shared failed on some ranks of the expert-parallel group "
                  "and succeeded on this one");
    char text[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    why =
        fmt::format("MPI could not allocate a shared-memory window ({})",
                    len > 0 ? std::string(text, static_cast<std::size_t>(len)) : "no reason given");
    win_ = MPI_WIN_NULL;
    return false;
  }
  RM_MPI_CHECK(MPI_Win_set_errhandler(win_, MPI_ERRORS_RETURN));
  int mapped = 1;
  for (int r = 0; r < size_; ++r) {
    MPI_Aint bytes = 0;
    int unit = 0;
    char* base = nullptr;
    RM_MPI_CHECK(MPI_Win_shared_query(win_, r, &bytes, &unit, &base));
    if (bytes != static_cast<MPI_Aint>(2 * half) || base == nullptr) mapped = 0;
    segment_[static_cast<std::size_t>(r)] = base;
  }
  RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &mapped, 1, MPI_INT, MPI_MIN, comm_));
  if (mapped == 0) {
    RM_MPI_CHECK(MPI_Win_free(&win_));
    win_ = MPI_WIN_NULL;
    segment_.assign(segment_.size(), nullptr);
    why = "MPI's shared-memory window does not map every rank's segment into this process";
    return false;
  }
  RM_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_));
  half_ = half;
  parity_ = 0;
  return true;
}

void SharedBlockExchange::release() {
  if (win_ == MPI_WIN_NULL) return;
  if (mpi_active()) {
    RM_MPI_CHECK(MPI_Win_unlock_all(win_));
    RM_MPI_CHECK(MPI_Win_free(&win_));
  }
  win_ = MPI_WIN_NULL;
  half_ = 0;
  parity_ = 0;
  segment_.assign(segment_.size(), nullptr);
}

}  // namespace routemoe::comm::detail
