#pragma once
// Communicators: the collectives routemoe needs, behind one interface with three backends:
// MPI (CPU buffers; also the control plane for everything else), NCCL (CUDA buffers; built with
// CUDA) and a single-process backend (size 1, no MPI needed). Every backend call checks its
// return code and throws routemoe::Error (Mpi / Nccl) naming the call, file:line and rank.
//
// Counts and displacements are in elements of the given DataType. Calls are blocking
// collectives: every rank of the communicator must make the same sequence of calls.
//
// Lifetime (the project rule: destructors never throw and never run collectives). Freeing a
// backend handle is collective in MPI (MPI_Comm_free) and in NCCL (ncclCommFinalize; a plain
// ncclCommDestroy finalizes internally), so destructors do not do it:
//   - release() is the explicit, collective way to free the handle early: every rank of the
//     communicator calls it (in the same order as its other collectives); afterwards the object
//     may only be destroyed. MPI: MPI_Comm_free for communicators made by split(). NCCL:
//     ncclCommFinalize, wait until quiescent, ncclCommDestroy.
//   - Without release(), the destructor only does local work: an MPI communicator's handle is
//     left to MPI_Finalize (which frees every communicator; communicators are few: the world
//     and the process groups), and an NCCL communicator is ncclCommAbort-ed, which is local
//     (every collective has completed when it returns, so nothing is in flight).
// The MPI backend passes counts and displacements to MPI as int: any above INT_MAX is an
// Error(Check) raised before MPI is called (on the ranks whose arguments exceed it).

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "framework/dtype.h"

namespace routemoe::comm {

enum class DataType { F32, F64, I32, I64, U8 };
enum class ReduceOp { Sum, Max, Min };

std::size_t datatype_size(DataType t);

template <typename T>
constexpr DataType datatype_of();
template <>
constexpr DataType datatype_of<float>() {
  return DataType::F32;
}
template <>
constexpr DataType datatype_of<double>() {
  return DataType::F64;
}
template <>
constexpr DataType datatype_of<std::int32_t>() {
  return DataType::I32;
}
template <>
constexpr DataType datatype_of<std::int64_t>() {
  return DataType::I64;
}
template <>
constexpr DataType datatype_of<std::uint8_t>() {
  return DataType::U8;
}

class Communicator {
 public:
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  // Local clean-up only; never a collective, never throws (see "Lifetime" above).
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where the buffers passed to this communicator live.
  virtual Device device() const = 0;
  virtual std::string backend() const = 0;  // "mpi", "nccl", "self"

  // In place: buf[count] = op over ranks of buf.
  virtual void all_reduce(void* buf, std::int64_t count, DataType type, ReduceOp op) = 0;
  // recv[r * count .. (r+1) * count) = rank r's send[0 .. count).
  virtual void all_gather(const void* send, void* recv, std::int64_t count, DataType type) = 0;
  // Block r of send (count elements) goes to rank r; recv block r comes from rank r.
  virtual void all_to_all(const void* send, void* recv, std::int64_t count, DataType type) = 0;
  // Variable-size exchange: send_counts[r] elements from send + send_displs[r] go to rank r;
  // recv_counts[r] elements from rank r land at recv + recv_displs[r]. Arrays have size() entries.
  virtual void all_to_all_v(const void* send, const std::int64_t* send_counts,
                            const std::int64_t* send_displs, void* recv,
                            const std::int64_t* recv_counts, const std::int64_t* recv_displs,
                            DataType type) = 0;
  // All-to-all of scattered blocks: the blocks for rank r are send_blocks[send_first[r] ..
  // send_first[r+1]); the blocks from rank r land in recv_blocks[recv_first[r] ..
  // recv_first[r+1]). Blocks correspond one to one: the k-th block this rank sends to r has
  // the same count as the k-th receive block r lists for this rank (zero-count blocks
  // included). Blocks are (displacement, count) in elements; the first arrays have size() + 1
  // entries. This lets expert-parallel dispatch/combine place rows straight where the experts
  // need them (MPI: one message per non-empty block, no packing copies). The default packs into
  // a contiguous buffer and calls all_to_all_v (CPU buffers only).
  struct Block {
    std::int64_t displ = 0;
    std::int64_t count = 0;
  };
  virtual void all_to_all_blocks(const void* send, const Block* send_blocks,
                                 const std::int64_t* send_first, void* recv,
                                 const Block* recv_blocks, const std::int64_t* recv_first,
                                 DataType type);
  // Shared memory between the ranks of one node: enable_shared_memory(true), a collective,
  // lets all_to_all_blocks move blocks through a shared-memory window instead of messages when
  // every rank of this communicator is on one node (MPI backend; comm/mpi_shared_exchange.h:
  // one copy in, one copy out, one all-reduce per exchange). Returns whether it will, the same
  // on every rank; false: messages (other backends, ranks on several nodes, want false, or a
  // first window that MPI could not make: rank 0 then prints one line saying why). Should the
  // window later fail to grow (no room in the shared-memory directory), the exchange falls
  // back to messages for good, with the same line. The rows delivered are
  // the same either way. isend/irecv always use messages.
  virtual bool enable_shared_memory(bool want) {
    (void)want;
    return false;
  }
  // Whether all_to_all_blocks currently moves blocks through shared memory.
  virtual bool shared_memory() const { return false; }
  virtual void broadcast(void* buf, std::int64_t count, DataType type, int root) = 0;
  virtual void barrier() = 0;

  // ---- Non-blocking point-to-point: exchanges overlapped with computation ----------------------
  // isend / irecv start moving `count` elements to / from rank `peer` of this communicator
  // under `tag` (0 <= tag < kMaxTag) and return a request id; the buffer must not be touched
  // (sent) or read (received) until the request has completed. Between one pair of ranks,
  // messages with the same tag match in the order they were started. A request completes in
  // wait() or in a test() that returns true; completed ids are forgotten. Every request must be
  // completed before release(). Zero counts are allowed (they still match).
  //   MPI:  MPI_Isend / MPI_Irecv. MPI moves data only inside its calls (no progress thread), so
  //         code that overlaps an exchange with computation calls test() between pieces of work.
  //   self: a send to rank 0 is matched with a receive of the same tag and copied then.
  //   NCCL: requests are queued and issued together as one group (ncclGroupStart/End) on the
  //         communicator's stream by the next test() or wait(); completion follows the stream.
  using Request = std::int64_t;
  static constexpr int kMaxTag = 1 << 15;  // MPI guarantees tags up to 32767
  // A backend without them (the base class's versions) throws Error(Check) naming itself.
  virtual Request isend(const void* buf, std::int64_t count, DataType type, int peer, int tag);
  virtual Request irecv(void* buf, std::int64_t count, DataType type, int peer, int tag);
  // Blocks until every request of `requests` has completed.
  virtual void wait(std::span<const Request> requests);
  // True (and the requests forgotten) when every request of `requests` has completed; otherwise
  // false, after moving transfers along. Never blocks.
  virtual bool test(std::span<const Request> requests);
  // A new communicator over the ranks with the same `color`, ordered by `key` (MPI_Comm_split).
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;
  // Collective: frees the backend handle now (see "Lifetime" above). Idempotent; after it only
  // rank(), size(), device(), backend() and the destructor may be called.
  virtual void release() {}
};

// Typed helpers.
template <typename T>
void all_reduce(Communicator& c, std::span<T> buf, ReduceOp op = ReduceOp::Sum) {
  c.all_reduce(buf.data(), static_cast<std::int64_t>(buf.size()), datatype_of<T>(), op);
}
template <typename T>
T all_reduce_value(Communicator& c, T value, ReduceOp op = ReduceOp::Sum) {
  c.all_reduce(&value, 1, datatype_of<T>(), op);
  return value;
}
template <typename T>
void all_to_all_v(Communicator& c, const T* send, const std::int64_t* send_counts,
                  const std::int64_t* send_displs, T* recv, const std::int64_t* recv_counts,
                  const std::int64_t* recv_displs) {
  c.all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, datatype_of<T>());
}

// MPI_COMM_WORLD (MPI must be initialised, see comm/mpi_runtime.h).
std::unique_ptr<Communicator> make_mpi_world();
// A communicator of one rank that copies where others exchange (no MPI needed).
std::unique_ptr<Communicator> make_self();
#if ROUTEMOE_HAVE_NCCL
// An NCCL communicator over the ranks of `control` (an MPI communicator), on CUDA `device`;
// the NCCL unique id is broadcast over `control`. All-to-all-v uses grouped ncclSend/ncclRecv.
// make_nccl splits `control` for its own use (a collective over `control`) and runs on its own
// stream; since the caller's buffers may have been written on any stream, each collective first
// waits for the whole device (cudaDeviceSynchronize) and synchronises its stream at the end.
std::unique_ptr<Communicator> make_nccl(const Communicator& control, int device);
// As above, but the collectives are queued on `stream` (a cudaStream_t owned by the caller,
// e.g. cuda::Context::stream()), which orders them after the caller's work on that stream; each
// collective still synchronises `stream` before returning. split() keeps the same stream.
std::unique_ptr<Communicator> make_nccl(const Communicator& control, int device, void* stream);
#endif

// The process groups of expert parallelism (docs/parallelism.md). World rank r belongs to
// expert-parallel group r / ep_size (ranks [g*ep, (g+1)*ep), which together hold all experts;
// ep rank = r % ep_size owns experts [ep_rank*E/ep, (ep_rank+1)*E/ep)) and to expert-data-
// parallel group r % ep_size (the ranks holding replicas of the same experts).
struct ProcessGroups {
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> ep;   // size ep_size
  std::unique_ptr<Communicator> edp;  // size world / ep_size
  int ep_size = 1;

  // Splits `world` (taking ownership); throws Error(Config) unless ep_size divides its size.
  // `shared_memory`: the ep group's exchange goes through shared memory when its ranks are on
  // one node (Communicator::enable_shared_memory; config key parallel.shared_memory).
  static ProcessGroups create(std::unique_ptr<Communicator> world, int ep_size,
                              bool shared_memory = true);
  // Collective over the world: release() of edp, ep and world, in that order.
  void release();
};

}  // namespace routemoe::comm
