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
//      then in the source's slot order, so each local expert has one contiguous block.
//   2. dispatch_rows: one block all-to-all (Communicator::all_to_all_blocks) that lands every
//      row directly in its expert-major place (MPI derived datatypes: no packing copies).
//   3. combine_rows: the reverse exchange, straight back into slot order.
// The plan and the block lists are built once per layer and micro-batch in the step's
// activation arena and serve the forward and backward exchanges; steady-state steps allocate
// nothing here.

#include <cstdint>

#include "layers/moe.h"

namespace routemoe::layers {

// Fills c.ep_size, local_experts, send_rows, recv_rows, recv_split, owner_start, local_offset,
// owner_rows and the exchange blocks (for rows of `width` elements) from c.expert_offset.
template <typename T>
void plan_dispatch(MoeCache<T>& c, comm::Communicator& ep, std::int64_t experts, std::int64_t width,
                   Arena& arena);

// slot_rows [S, width] (slot order) -> owner_rows [R, width] (expert-major on the owner).
template <typename T>
void dispatch_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* slot_rows, T* owner_rows);

// owner_rows [R, width] (expert-major) -> slot_rows [S, width] back on the sources.
template <typename T>
void combine_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* owner_rows, T* slot_rows);

}  // namespace routemoe::layers
