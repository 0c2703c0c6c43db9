// NCCL backend of the communicator interface (CUDA buffers). Built only with NCCL; a plain C++
// source compiled against the CUDA and NCCL headers.
//
// Creation: the NCCL unique id is made on rank 0 of a private split of the MPI control
// communicator and broadcast over it; ncclCommInitRank then joins every rank. The private
// control communicator also carries barrier() and split(): a split makes a new NCCL
// communicator over the split control (version independent; no ncclCommSplit needed).
//
// Streams: collectives run on the caller's stream when one is given (make_nccl(..., stream)),
// else on a stream of our own after a cudaDeviceSynchronize (the buffers may have been written
// on any stream). Every collective synchronises its stream before returning, so none is in
// flight between calls.
//
// Lifetime (comm/communicator.h): release() is collective (ncclCommFinalize, wait until the
// communicator is quiescent, ncclCommDestroy); the destructor is local: ncclCommAbort on a
// communicator that was not released (ncclCommDestroy without ncclCommFinalize would finalize,
// i.e. synchronise with the peers), then the private control communicator is dropped.

#if ROUTEMOE_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "framework/cuda/check.h"
#include "framework/error.h"

namespace routemoe::comm {
namespace {

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return ncclFloat32;
    case DataType::F64:
      return ncclFloat64;
    case DataType::I32:
      return ncclInt32;
    case DataType::I64:
      return ncclInt64;
    case DataType::U8:
      return ncclUint8;
  }
  RM_FAIL(Check, "unknown comm::DataType " + std::to_string(static_cast<int>(t)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  RM_FAIL(Check, "unknown comm::ReduceOp " + std::to_string(static_cast<int>(op)));
}

std::size_t to_count(std::int64_t v, const char* what) {
  RM_CHECK(v >= 0,
           std::string("NCCL communicator: ") + what + " = " + std::to_string(v) + " is negative");
  return static_cast<std::size_t>(v);
}

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `control`. `stream` is the caller's cudaStream_t, or null for our own.
  NcclCommunicator(std::unique_ptr<Communicator> control, int device, cudaStream_t stream)
      : control_(std::move(control)), device_(device) {
    RM_CHECK(control_->device() == Device::CPU,
             "make_nccl: the control communicator must be a CPU (MPI or self) communicator, got "
             "backend '" +
                 control_->backend() + "'");
    rank_ = control_->rank();
    size_ = control_->size();
    RM_CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId id{};
    if (rank_ == 0) RM_NCCL_CHECK(ncclGetUniqueId(&id));
    control_->broadcast(&id, static_cast<std::int64_t>(sizeof id), DataType::U8, 0);
    RM_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
    if (stream != nullptr) {
      stream_ = stream;
    } else {
      RM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      own_stream_ = true;
    }
  }

  ~NcclCommunicator() override {
    // Local only (see the file comment); errors go to stderr, nothing throws.
    if (comm_ != nullptr) {
      const ncclResult_t rc = ncclCommAbort(comm_);
      if (rc != ncclSuccess)
        std::fprintf(stderr, "routemoe: ncclCommAbort in ~NcclCommunicator: %s\n",
                     ncclGetErrorString(rc));
    }
    if (own_stream_ && stream_ != nullptr) {
      const cudaError_t rc = cudaStreamDestroy(stream_);
      if (rc != cudaSuccess)
        std::fprintf(stderr, "routemoe: cudaStreamDestroy in ~NcclCommunicator: %s\n",
                     cudaGetErrorString(rc));
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CUDA; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(void* buf, std::int64_t count, DataType type, ReduceOp op) override {
    const std::size_t n = to_count(count, "all_reduce count");
    if (n == 0) return;
    begin();
    RM_NCCL_CHECK(ncclAllReduce(buf, buf, n, nccl_type(type), nccl_op(op), comm_, stream_));
    end();
  }

  void all_gather(const void* send, void* recv, std::int64_t count, DataType type) override {
    const std::size_t n = to_count(count, "all_gather count");
    if (n == 0) return;
    begin();
    RM_NCCL_CHECK(ncclAllGather(send, recv, n, nccl_type(type), comm_, stream_));
    end();
  }

  void all_to_all(const void* send, void* recv, std::int64_t count, DataType type) override {
    const std::size_t n = to_count(count, "all_to_all count");
    if (n == 0) return;
    const std::size_t bytes = n * datatype_size(type);
    begin();
    RM_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size_; ++r) {
      const std::size_t off = static_cast<std::size_t>(r) * bytes;
      RM_NCCL_CHECK(
          ncclSend(static_cast<const char*>(send) + off, n, nccl_type(type), r, comm_, stream_));
      RM_NCCL_CHECK(
          ncclRecv(static_cast<char*>(recv) + off, n, nccl_type(type), r, comm_, stream_));
    }
    RM_NCCL_CHECK(ncclGroupEnd());
    end();
  }

  void all_to_all_v(const void* send, const std::int64_t* send_counts,
                    const std::int64_t* send_displs, void* recv, const std::int64_t* recv_counts,
                    const std::int64_t* recv_displs, DataType type) override {
    RM_CHECK(send_counts && send_displs && recv_counts && recv_displs,
             "NCCL communicator: all_to_all_v count/displacement arrays must not be null");
    const std::size_t es = datatype_size(type);
    // Validate everything before the group starts, so that a bad argument never leaves a group
    // open.
    std::vector<std::size_t> sc(size_), sd(size_), rc(size_), rd(size_);
    for (int r = 0; r < size_; ++r) {
      sc[r] = to_count(send_counts[r], "all_to_all_v send_counts[r]");
      sd[r] = to_count(send_displs[r], "all_to_all_v send_displs[r]");
      rc[r] = to_count(recv_counts[r], "all_to_all_v recv_counts[r]");
      rd[r] = to_count(recv_displs[r], "all_to_all_v recv_displs[r]");
    }
    begin();
    RM_NCCL_CHECK(ncclGroupStart());
    // A zero count on one side is a zero count on the other (send_counts[r] here is
    // recv_counts[me] on rank r), so both skip the pair.
    for (int r = 0; r < size_; ++r) {
      if (sc[r] > 0)
        RM_NCCL_CHECK(ncclSend(static_cast<const char*>(send) + sd[r] * es, sc[r], nccl_type(type),
                               r, comm_, stream_));
      if (rc[r] > 0)
        RM_NCCL_CHECK(ncclRecv(static_cast<char*>(recv) + rd[r] * es, rc[r], nccl_type(type), r,
                               comm_, stream_));
    }
    RM_NCCL_CHECK(ncclGroupEnd());
    end();
  }

  Request isend(const void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    return queue(true, buf, nullptr, count, type, peer, tag);
  }

  Request irecv(void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    return queue(false, nullptr, buf, count, type, peer, tag);
  }

  void wait(std::span<const Request> requests) override {
    flush();
    for (const Request id : requests) {
      const auto it = issued_.find(id);
      RM_CHECK(it != issued_.end(),
               "NCCL communicator: request " + std::to_string(id) + " is not pending");
      if (it->second != nullptr) RM_CUDA_CHECK(cudaEventSynchronize(it->second->event));
    }
    check_async();
    for (const Request id : requests) issued_.erase(id);
  }

  bool test(std::span<const Request> requests) override {
    flush();
    for (const Request id : requests) {
      const auto it = issued_.find(id);
      RM_CHECK(it != issued_.end(),
               "NCCL communicator: request " + std::to_string(id) + " is not pending");
      if (it->second == nullptr) continue;
      const cudaError_t rc = cudaEventQuery(it->second->event);
      if (rc == cudaErrorNotReady) return false;
      RM_CUDA_CHECK(rc);
    }
    check_async();
    for (const Request id : requests) issued_.erase(id);
    return true;
  }

  void broadcast(void* buf, std::int64_t count, DataType type, int root) override {
    RM_CHECK(root >= 0 && root < size_, "NCCL communicator: broadcast root " +
                                            std::to_string(root) + " is not a rank of a size-" +
                                            std::to_string(size_) + " communicator");
    const std::size_t n = to_count(count, "broadcast count");
    if (n == 0) return;
    begin();
    RM_NCCL_CHECK(ncclBroadcast(buf, buf, n, nccl_type(type), root, comm_, stream_));
    end();
  }

  void barrier() override {
    begin();
    end();
    control_->barrier();
  }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    check_live();
    std::unique_ptr<Communicator> sub = control_->split(color, key);
    return std::make_unique<NcclCommunicator>(std::move(sub), device_,
                                              own_stream_ ? nullptr : stream_);
  }

  void release() override {
    if (comm_ == nullptr) return;
    RM_CHECK(queued_.empty() && issued_.empty(),
             "NCCL communicator: release() with non-blocking requests not completed");
    RM_CUDA_CHECK(cudaSetDevice(device_));
    RM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    RM_NCCL_CHECK(ncclCommFinalize(comm_));
    // A blocking communicator finalizes synchronously; poll in case it reports progress.
    ncclResult_t finalize_state = ncclInProgress;
    do {
      RM_NCCL_CHECK(ncclCommGetAsyncError(comm_, &finalize_state));
    } while (finalize_state == ncclInProgress);
    RM_NCCL_CHECK(finalize_state);
    RM_NCCL_CHECK(ncclCommDestroy(comm_));
    comm_ = nullptr;
    control_->release();
  }

 private:
  void check_live() const { RM_CHECK(comm_ != nullptr, "NCCL communicator used after release()"); }

  // Before a collective: select the device and, on our own stream, wait for all work that may
  // have written the buffers.
  void begin() {
    check_live();
    RM_CUDA_CHECK(cudaSetDevice(device_));
    if (own_stream_) RM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // After a collective: wait for it, and surface asynchronous NCCL errors.
  void end() {
    RM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ncclResult_t async = ncclSuccess;
    RM_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    RM_NCCL_CHECK(async);
  }

  // Non-blocking point-to-point: requests wait in queued_ until the next test() or wait() issues
  // them as one group; issued requests map to the event recorded after their group (null: a
  // zero-count request, complete at once).
  struct Queued {
    Request id;
    bool send;
    const void* src;  // send
    void* dst;        // receive
    std::size_t count;
    DataType type;
    int peer;
  };
  struct GroupEvent {
    cudaEvent_t event = nullptr;
    ~GroupEvent() {
      if (event != nullptr) cudaEventDestroy(event);
    }
  };

  Request queue(bool send, const void* src, void* dst, std::int64_t count, DataType type, int peer,
                int tag) {
    check_live();
    const char* what = send ? "isend" : "irecv";
    RM_CHECK(peer >= 0 && peer < size_, std::string("NCCL communicator: ") + what + " peer " +
                                            std::to_string(peer) + " is not a rank of a size-" +
                                            std::to_string(size_) + " communicator");
    RM_CHECK(tag >= 0 && tag < kMaxTag, std::string("NCCL communicator: ") + what + " tag " +
                                            std::to_string(tag) + " is outside [0, " +
                                            std::to_string(kMaxTag) + ")");
    const Request id = next_request_++;
    const std::size_t n = to_count(count, "isend/irecv count");
    if (n == 0) {
      issued_.emplace(id, nullptr);
    } else {
      queued_.push_back({id, send, src, dst, n, type, peer});
    }
    return id;
  }

  // Issues the queued requests as one group and records their completion event.
  void flush() {
    check_live();
    if (queued_.empty()) return;
    begin();
    auto group = std::make_shared<GroupEvent>();
    RM_CUDA_CHECK(cudaEventCreateWithFlags(&group->event, cudaEventDisableTiming));
    RM_NCCL_CHECK(ncclGroupStart());
    for (const Queued& q : queued_) {
      if (q.send) {
        RM_NCCL_CHECK(ncclSend(q.src, q.count, nccl_type(q.type), q.peer, comm_, stream_));
      } else {
        RM_NCCL_CHECK(ncclRecv(q.dst, q.count, nccl_type(q.type), q.peer, comm_, stream_));
      }
    }
    RM_NCCL_CHECK(ncclGroupEnd());
    RM_CUDA_CHECK(cudaEventRecord(group->event, stream_));
    for (const Queued& q : queued_) issued_.emplace(q.id, group);
    queued_.clear();
  }

  void check_async() {
    ncclResult_t async = ncclSuccess;
    RM_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    RM_NCCL_CHECK(async);
  }

  std::vector<Queued> queued_;
  std::unordered_map<Request, std::shared_ptr<GroupEvent>> issued_;
  Request next_request_ = 1;

  std::unique_ptr<Communicator> control_;
  int device_;
  int rank_ = 0;
  int size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(const Communicator& control, int device, void* stream) {
  // A private control communicator: NCCL's bootstrap traffic and barrier() never interleave
  // with the caller's use of `control`.
  std::unique_ptr<Communicator> own = control.split(0, control.rank());
  return std::make_unique<NcclCommunicator>(std::move(own), device,
                                            static_cast<cudaStream_t>(stream));
}

std::unique_ptr<Communicator> make_nccl(const Communicator& control, int device) {
  return make_nccl(control, device, nullptr);
}

}  // namespace routemoe::comm

#endif  // ROUTEMOE_HAVE_NCCL
