#pragma once
// Expert-parallel dispatch and combine: moving the expert-input rows of a micro-batch (in slot
// order, grouped by global expert) to the ranks of the ep group that own those experts, and the
// expert outputs back. Used by the MoE layer's forward (inputs out, outputs back) and backward
// (output gradients out, input gradients back); collective over the ep group.
//
// Rank q of P owns experts [q*E/P, (q+1)*E/P). Per layer and micro-batch:
//   1. plan_dispatch: all-to-all of the per-expert slot counts (E int64 per rank), from which
//      every rank knows how many rows it sends to and receives from each peer and where each
//      received row goes: the owner's rows are ordered by local expert, then by source rank,
//      then in the source's slot order, so each local expert has one contiguous block. The plan
//      is the handle that every later exchange of the layer takes back (as DeepEP's dispatch
//      handle, but typed).
//   2. dispatch_rows: one block all-to-all (Communicator::all_to_all_blocks) that lands every
//      row directly in its expert-major place (MPI derived datatypes: no packing copies).
//   3. combine_rows: the reverse exchange, straight back into slot order.
// or, with the experts' computation in between and overlapped with both exchanges,
// exchange_overlapped (the MoE layer's way: chunked by local expert, expert l computes while the
// rows of l + 1 arrive and the outputs of l - 1 leave).
// The plan and its block lists live in the step's activation arena and serve the forward and
// backward exchanges; steady-state steps allocate nothing here. Without expert parallelism
// (no communicator, or one rank) the plan is local: every expert is local, the expert-major
// rows are the slot-order rows, and nothing is exchanged.

#include <cstdint>
#include <functional>

#include "comm/communicator.h"
#include "framework/arena.h"

namespace routemoe::layers {

struct DispatchPlan {
  int ep_size = 1;                 // P ranks in the ep group (1: local plan)
  std::int64_t experts = 0;        // E global experts
  std::int64_t local_experts = 0;  // L = E / P experts owned here
  std::int64_t slots = 0;          // S rows sent (slot order)
  std::int64_t owner_rows = 0;     // R rows received for the local experts
  // [L + 1] first expert-major row of each local expert (local plan: the slot offsets).
  const std::int64_t* local_offset = nullptr;
  // Exchange only (ep_size > 1):
  std::int64_t* recv_split = nullptr;   // [P * L] rows from rank p for local expert l
  std::int64_t* owner_start = nullptr;  // [P * L] first expert-major row of (p, l)
  // One block per (peer, local expert) on both sides, in elements of rows of the plan's width.
  comm::Communicator::Block* slot_blocks = nullptr;   // [P * L] in slot order
  comm::Communicator::Block* owner_blocks = nullptr;  // [P * L] in expert-major order
  std::int64_t* block_first = nullptr;                // [P + 1] = p * L

  bool exchanges() const { return ep_size > 1; }
};

// The plan for slots grouped by global expert (expert_offset [E + 1], host memory) moving rows of
// `width` elements. Collective over `ep` when it has more than one rank (one all-to-all of the
// counts); with ep null or of size 1 it returns the local plan without communicating.
DispatchPlan plan_dispatch(const std::int64_t* expert_offset, std::int64_t experts,
                           std::int64_t width, comm::Communicator* ep, Arena& arena);

// slot_rows [S, width] (slot order) -> owner_rows [R, width] (expert-major on the owner).
template <typename T>
void dispatch_rows(const DispatchPlan& plan, comm::Communicator& ep, const T* slot_rows,
                   T* owner_rows);

// owner_rows [R, width] (expert-major) -> slot_rows [S, width] back on the sources.
template <typename T>
void combine_rows(const DispatchPlan& plan, comm::Communicator& ep, const T* owner_rows,
                  T* slot_rows);

// The way out, the experts' computation and the way back in one call, with the exchange
// overlapped with the computation (chunked by local expert):
//   1. every (peer, local expert) block of slot_in goes out at once (non-blocking point-to-point,
//      Communicator::isend / irecv), local expert 0's blocks first;
//   2. local expert l's `compute(l)` runs as soon as all P of its blocks have landed in owner_in
//      (expert-major, as dispatch_rows lays them out), while later experts' blocks are still on
//      their way; compute(l) reads owner rows [local_offset[l], local_offset[l + 1]) of owner_in
//      and writes the same rows of owner_out;
//   3. expert l's output blocks go back at once, into slot_out (slot order, as combine_rows),
//      while expert l + 1 computes.
// Between experts Communicator::test moves the transfers along (MPI progresses only inside its
// calls). The rows delivered are those of dispatch_rows, compute(0), ..., compute(L - 1),
// combine_rows; experts with no rows (empty blocks) are computed too (compute(l) sees an empty
// range). Collective over `ep`; `plan` must exchange. Returns the seconds spent in compute, so
// that a profile can split the call into computation and waiting.
template <typename T>
double exchange_overlapped(const DispatchPlan& plan, comm::Communicator& ep, const T* slot_in,
                           T* owner_in, T* owner_out, T* slot_out,
                           const std::function<void(std::int64_t)>& compute);

}  // namespace routemoe::layers
