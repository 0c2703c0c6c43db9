// MPI backend of the communicator interface (CPU buffers; also the control plane of NCCL).
// Lifetime: see "Lifetime" in comm/communicator.h. The destructor never calls MPI; release()
// frees a split communicator collectively, and MPI_Finalize frees whatever is left.

#include <mpi.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/mpi_shared_exchange.h"
#include "comm/watchdog.h"
#include "framework/error.h"

namespace routemoe::comm {
namespace {

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return MPI_FLOAT;
    case DataType::F64:
      return MPI_DOUBLE;
    case DataType::I32:
      return MPI_INT32_T;
    case DataType::I64:
      return MPI_INT64_T;
    case DataType::U8:
      return MPI_UINT8_T;
  }
  RM_FAIL(Check, "unknown comm::DataType " + std::to_string(static_cast<int>(t)));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  RM_FAIL(Check, "unknown comm::ReduceOp " + std::to_string(static_cast<int>(op)));
}

// MPI (3.1, as in Open MPI 4.1) takes int counts; larger ones are an error, not a silent wrap.
[[noreturn]] void bad_mpi_count(std::int64_t v, const char* what, int index) {
  std::string msg = "MPI communicator: ";
  msg += what;
  if (index >= 0) msg.append("[").append(std::to_string(index)).append("]");
  msg.append(" = ").append(std::to_string(v));
  if (v < 0) {
    msg += " is negative";
  } else {
    msg.append(" exceeds INT_MAX (").append(std::to_string(INT_MAX));
    msg += "), the largest count or displacement MPI accepts";
  }
  RM_FAIL(Check, msg);
}

int to_mpi_count(std::int64_t v, const char* what, int index = -1) {
  if (v < 0 || v > INT_MAX) bad_mpi_count(v, what, index);
  return static_cast<int>(v);
}

std::vector<int> to_mpi_counts(const std::int64_t* v, int n, const char* what) {
  RM_CHECK(v != nullptr || n == 0, std::string("MPI communicator: ") + what + " is null");
  std::vector<int> out(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = to_mpi_count(v[i], what, i);
  return out;
}

class MpiCommunicator final : public Communicator {
 public:
  // `owned`: the handle came from MPI_Comm_split and release() may free it.
  MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    RM_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    RM_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  // Nothing collective here (see the file comment): an unreleased split communicator is freed
  // by MPI_Finalize.
  ~MpiCommunicator() override = default;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(void* buf, std::int64_t count, DataType type, ReduceOp op) override {
    check_live();
    const WatchedOp watched("all_reduce");
    const int n = to_mpi_count(count, "all_reduce count");
    if (n == 0) return;  // every rank has the same count, so all of them skip
    RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, n, mpi_type(type), mpi_op(op), comm_));
  }

  void all_gather(const void* send, void* recv, std::int64_t count, DataType type) override {
    check_live();
    const WatchedOp watched("all_gather");
    const int n = to_mpi_count(count, "all_gather count");
    if (n == 0) return;
    RM_MPI_CHECK(MPI_Allgather(send, n, mpi_type(type), recv, n, mpi_type(type), comm_));
  }

  void all_to_all(const void* send, void* recv, std::int64_t count, DataType type) override {
    check_live();
    const WatchedOp watched("all_to_all");
    const int n = to_mpi_count(count, "all_to_all count");
    if (n == 0) return;
    RM_MPI_CHECK(MPI_Alltoall(send, n, mpi_type(type), recv, n, mpi_type(type), comm_));
  }

  void all_to_all_v(const void* send, const std::int64_t* send_counts,
                    const std::int64_t* send_displs, void* recv, const std::int64_t* recv_counts,
                    const std::int64_t* recv_displs, DataType type) override {
    check_live();
    const WatchedOp watched("all_to_all_v");
    const std::vector<int> sc = to_mpi_counts(send_counts, size_, "all_to_all_v send_counts");
    const std::vector<int> sd = to_mpi_counts(send_displs, size_, "all_to_all_v send_displs");
    const std::vector<int> rc = to_mpi_counts(recv_counts, size_, "all_to_all_v recv_counts");
    const std::vector<int> rd = to_mpi_counts(recv_displs, size_, "all_to_all_v recv_displs");
    RM_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), mpi_type(type), recv, rc.data(),
                               rd.data(), mpi_type(type), comm_));
  }

  void all_to_all_blocks(const void* send, const Block* send_blocks, const std::int64_t* send_first,
                         void* recv, const Block* recv_blocks, const std::int64_t* recv_first,
                         DataType type) override {
    check_live();
    const WatchedOp watched("all_to_all_blocks");
    if (shm_ != nullptr) {
      std::string why;
      if (shm_->exchange(send, send_blocks, send_first, recv, recv_blocks, recv_first,
                         datatype_size(type), why)) {
        return;
      }
      // Every rank got the same answer (the sizes are all-reduced): all fall back together.
      shm_->release();
      shm_.reset();
      note_messages(why);
    }
    // Blocks correspond one to one (see communicator.h): the k-th block to a peer is matched
    // by that peer's k-th receive block, so each non-empty block travels as its own message,
    // contiguous on both ends (no packing, no datatype engine).
    const MPI_Datatype base = mpi_type(type);
    const auto esize = static_cast<std::ptrdiff_t>(datatype_size(type));
    std::vector<MPI_Request> reqs;
    reqs.reserve(static_cast<std::size_t>(send_first[size_] + recv_first[size_]));
    for (int r = 0; r < size_; ++r) {
      for (std::int64_t b = recv_first[r]; b < recv_first[r + 1]; ++b) {
        if (recv_blocks[b].count == 0) continue;
        reqs.emplace_back();
        RM_MPI_CHECK(MPI_Irecv(static_cast<char*>(recv) + recv_blocks[b].displ * esize,
                               to_mpi_count(recv_blocks[b].count, "all_to_all_blocks count"), base,
                               r, static_cast<int>(b - recv_first[r]), comm_, &reqs.back()));
      }
    }
    for (int k = 1; k <= size_; ++k) {  // start with the next rank: spreads the load
      const int r = (rank_ + k) % size_;
      for (std::int64_t b = send_first[r]; b < send_first[r + 1]; ++b) {
        if (send_blocks[b].count == 0) continue;
        reqs.emplace_back();
        RM_MPI_CHECK(MPI_Isend(static_cast<const char*>(send) + send_blocks[b].displ * esize,
                               to_mpi_count(send_blocks[b].count, "all_to_all_blocks count"), base,
                               r, static_cast<int>(b - send_first[r]), comm_, &reqs.back()));
      }
    }
    RM_MPI_CHECK(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
  }

  Request isend(const void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    check_live();
    check_peer_tag("isend", peer, tag);
    MPI_Request r = MPI_REQUEST_NULL;
    RM_MPI_CHECK(
        MPI_Isend(buf, to_mpi_count(count, "isend count"), mpi_type(type), peer, tag, comm_, &r));
    return remember(r);
  }

  Request irecv(void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    check_live();
    check_peer_tag("irecv", peer, tag);
    MPI_Request r = MPI_REQUEST_NULL;
    RM_MPI_CHECK(
        MPI_Irecv(buf, to_mpi_count(count, "irecv count"), mpi_type(type), peer, tag, comm_, &r));
    return remember(r);
  }

  void wait(std::span<const Request> requests) override {
    check_live();
    const WatchedOp watched("wait (non-blocking exchange)");
    std::vector<MPI_Request> rs = lookup(requests);
    RM_MPI_CHECK(MPI_Waitall(static_cast<int>(rs.size()), rs.data(), MPI_STATUSES_IGNORE));
    forget(requests);
  }

  bool test(std::span<const Request> requests) override {
    check_live();
    std::vector<MPI_Request> rs = lookup(requests);
    int done = 0;
    // On false MPI_Testall leaves every request as it was (still pending in pending_).
    RM_MPI_CHECK(MPI_Testall(static_cast<int>(rs.size()), rs.data(), &done, MPI_STATUSES_IGNORE));
    if (done != 0) forget(requests);
    return done != 0;
  }

  bool enable_shared_memory(bool want) override {
    check_live();
    const WatchedOp watched("enable_shared_memory");
    if (!want || size_ == 1) {
      if (shm_ != nullptr) shm_->release();  // collective: every rank makes this call
      shm_.reset();
      return false;
    }
    if (shm_ == nullptr && detail::SharedBlockExchange::one_node(comm_)) {
      auto shm = std::make_unique<detail::SharedBlockExchange>(comm_, rank_, size_);
      std::string why;
      if (shm->prepare(why)) {
        shm_ = std::move(shm);
      } else {
        note_messages(why);
      }
    }
    return shm_ != nullptr;
  }

  bool shared_memory() const override { return shm_ != nullptr; }

  void broadcast(void* buf, std::int64_t count, DataType type, int root) override {
    check_live();
    const WatchedOp watched("broadcast");
    RM_CHECK(root >= 0 && root < size_, "MPI communicator: broadcast root " + std::to_string(root) +
                                            " is not a rank of a size-" + std::to_string(size_) +
                                            " communicator");
    const int n = to_mpi_count(count, "broadcast count");
    if (n == 0) return;
    RM_MPI_CHECK(MPI_Bcast(buf, n, mpi_type(type), root, comm_));
  }

  void barrier() override {
    check_live();
    const WatchedOp watched("barrier");
    RM_MPI_CHECK(MPI_Barrier(comm_));
  }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    check_live();
    const WatchedOp watched("communicator split");
    RM_CHECK(color >= 0, "MPI communicator: split color " + std::to_string(color) +
                             " is negative (MPI_UNDEFINED is not supported)");
    MPI_Comm out = MPI_COMM_NULL;
    RM_MPI_CHECK(MPI_Comm_split(comm_, color, key, &out));
    // The error handler (MPI_ERRORS_RETURN, set on the world by init_mpi) is inherited.
    return std::make_unique<MpiCommunicator>(out, true);
  }

  void release() override {
    if (comm_ == MPI_COMM_NULL) return;
    RM_CHECK(pending_.empty(), "MPI communicator: release() with " +
                                   std::to_string(pending_.size()) +
                                   " non-blocking request(s) not completed");
    if (shm_ != nullptr) shm_->release();
    shm_.reset();
    if (owned_ && mpi_active()) RM_MPI_CHECK(MPI_Comm_free(&comm_));
    comm_ = MPI_COMM_NULL;
  }

 private:
  void check_live() const {
    RM_CHECK(comm_ != MPI_COMM_NULL, "MPI communicator used after release()");
    RM_CHECK_KIND(Mpi, mpi_active(), "MPI communicator used while MPI is not active");
  }

  // Rank 0 says once why the exchange uses messages although its ranks share a node.
  void note_messages(const std::string& why) const {
    if (rank_ != 0) return;
    std::fprintf(stderr,
                 "note: the expert exchange uses MPI messages instead of shared memory: %s "
                 "(parallel.shared_memory = false chooses messages without trying)\n",
                 why.c_str());
  }

  void check_peer_tag(const char* what, int peer, int tag) const {
    RM_CHECK(peer >= 0 && peer < size_, std::string("MPI communicator: ") + what + " peer " +
                                            std::to_string(peer) + " is not a rank of a size-" +
                                            std::to_string(size_) + " communicator");
    RM_CHECK(tag >= 0 && tag < kMaxTag, std::string("MPI communicator: ") + what + " tag " +
                                            std::to_string(tag) + " is outside [0, " +
                                            std::to_string(kMaxTag) + ")");
  }
  Request remember(MPI_Request r) {
    const Request id = next_request_++;
    pending_.emplace(id, r);
    return id;
  }
  std::vector<MPI_Request> lookup(std::span<const Request> requests) const {
    std::vector<MPI_Request> rs;
    rs.reserve(requests.size());
    for (const Request id : requests) {
      const auto it = pending_.find(id);
      RM_CHECK(it != pending_.end(), "MPI communicator: request " + std::to_string(id) +
                                         " is not pending (completed already, or never started)");
      rs.push_back(it->second);
    }
    return rs;
  }
  void forget(std::span<const Request> requests) {
    for (const Request id : requests) pending_.erase(id);
  }

  MPI_Comm comm_;
  bool owned_;
  std::unordered_map<Request, MPI_Request> pending_;  // non-blocking requests in flight
  // all_to_all_blocks through shared memory (enable_shared_memory); null: messages.
  std::unique_ptr<detail::SharedBlockExchange> shm_;
  Request next_request_ = 1;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world() {
  RM_CHECK_KIND(Mpi, mpi_active(),
                "make_mpi_world: MPI is not initialised (call comm::init_mpi first)");
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace routemoe::comm
