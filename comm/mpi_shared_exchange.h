#pragma once
// The shared-memory transport of the MPI communicator's all_to_all_blocks, for a communicator
// whose ranks are all on one node (comm/communicator.h, enable_shared_memory).
//
// Over shared memory an MPI message costs a handshake and, above the eager size, a single-copy
// read by the kernel (CMA) per message; the expert exchange sends one message per (peer, local
// expert) block, so on one node it was 1.2-1.4x a bare MPI_Alltoallv of the same bytes at
// 256-1024 tokens (docs/performance.md). Here every rank owns a segment of one MPI shared-memory
// window (MPI_Win_allocate_shared) split into two halves used in turn by successive exchanges.
// One exchange:
//   1. pack: the rank copies the blocks it sends to every other rank into its current half,
//      peer by peer in block order, after a header of size() byte offsets (where the blocks of
//      each peer begin);
//   2. one MPI_Allreduce (max of the bytes every rank needed) is the synchronisation: when it
//      returns, every rank's half is packed (MPI_Win_sync on both sides orders the stores and
//      loads around it, as MPI's separate memory model for shared windows asks);
//   3. pull: the rank copies its blocks out of every peer's half (at the offset the peer's
//      header gives) straight to their places in the receive buffer; its own blocks are copied
//      from the send buffer directly.
// No second synchronisation: the next exchange packs the other half, and the one after it
// packs this half again only after its own all-reduce, which no rank enters before it has
// finished pulling from this one. The halves grow (collectively, from the all-reduced size:
// every rank agrees) when an exchange needs more; before growing, the free space of the
// backing directory (Open MPI: osc_sm_backing_directory, /dev/shm) is checked on every rank,
// and if any rank lacks it the exchange reports "no room" and the caller falls back to
// messages for good (a shared-memory file larger than its tmpfs would crash the job with
// SIGBUS on first touch instead). An MPI that cannot make a shared window at all (Open MPI
// without its osc/sm component) is found by prepare(), before the first exchange.
//
// Lifetime: release() (collective) frees the window; the destructor does nothing collective
// (an unreleased window is left to MPI_Finalize).

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace routemoe::comm::detail {

class SharedBlockExchange {
 public:
  // Collective over `comm`: true when every rank of `comm` is on one node (the same
  // MPI_COMM_TYPE_SHARED split); the same answer on every rank.
  static bool one_node(MPI_Comm comm);

  SharedBlockExchange(MPI_Comm comm, int rank, int size);
  SharedBlockExchange(const SharedBlockExchange&) = delete;
  SharedBlockExchange& operator=(const SharedBlockExchange&) = delete;
  ~SharedBlockExchange() = default;

  // Collective: the all_to_all_blocks contract of comm/communicator.h with element size `esize`
  // in bytes. Returns false, having moved nothing, when the window could not grow to what this
  // exchange needs (every rank returns false: the caller sends messages instead); `why` then
  // says what was missing.
  bool exchange(const void* send, const Communicator::Block* send_blocks,
                const std::int64_t* send_first, void* recv, const Communicator::Block* recv_blocks,
                const std::int64_t* recv_first, std::size_t esize, std::string& why);

  // Collective: makes a first, small window (1 MiB halves), so that an MPI without shared
  // windows or a shared-memory directory without room shows before any exchange. False (and
  // `why`) on every rank alike when it cannot; the exchange must not be used then.
  bool prepare(std::string& why);

  // Collective: frees the window. Idempotent.
  void release();

  // Bytes of one half of this rank's segment (0 before the first exchange).
  std::int64_t half_bytes() const { return half_; }

 private:
  // Collective: replaces the window by one whose halves hold `half` bytes each; false (and no
  // window) when some rank's backing directory has no room for it.
  bool grow(std::int64_t half, std::string& why);
  // Bytes this rank packs for an exchange: the header and every block to another rank.
  std::int64_t packed_bytes(const Communicator::Block* send_blocks, const std::int64_t* send_first,
                            std::size_t esize) const;
  void pack(const void* send, const Communicator::Block* send_blocks,
            const std::int64_t* send_first, std::size_t esize);
  char* half_of(int r) const { return segment_[static_cast<std::size_t>(r)] + parity_ * half_; }

  MPI_Comm comm_;
  int rank_;
  int size_;
  MPI_Win win_ = MPI_WIN_NULL;
  std::vector<char*> segment_;  // [size] each rank's segment, mapped here
  std::int64_t half_ = 0;
  int parity_ = 0;  // the half this exchange packs
};

}  // namespace routemoe::comm::detail
