#include "layers/dispatch.h"

#include <fmt/format.h>

#include "framework/error.h"

namespace routemoe::layers {

namespace {

// Per-peer receive layout: expert l's block holds the rows of rank 0, then rank 1, ...
void layout_owner_rows(DispatchPlan& plan, Arena& arena) {
  const int P = plan.ep_size;
  const std::int64_t L = plan.local_experts;
  std::int64_t* local_offset = alloc_array<std::int64_t>(arena, L + 1);
  plan.owner_start = alloc_array<std::int64_t>(arena, P * L);
  std::int64_t pos = 0;
  for (std::int64_t l = 0; l < L; ++l) {
    local_offset[l] = pos;
    for (int p = 0; p < P; ++p) {
      plan.owner_start[p * L + l] = pos;
      pos += plan.recv_split[p * L + l];
    }
  }
  local_offset[L] = pos;
  plan.local_offset = local_offset;
  plan.owner_rows = pos;
}

// Blocks in one-to-one correspondence (Communicator::all_to_all_blocks): (p, l) is global expert
// e = p * L + l, a contiguous run of slots on the token side (slots are grouped by global
// expert) and of rows at owner_start[e] on the owner side.
void build_blocks(DispatchPlan& plan, const std::int64_t* expert_offset, std::int64_t width,
                  Arena& arena) {
  using Block = comm::Communicator::Block;
  const std::int64_t E = plan.experts;
  plan.slot_blocks = alloc_array<Block>(arena, E);
  plan.owner_blocks = alloc_array<Block>(arena, E);
  plan.block_first = alloc_array<std::int64_t>(arena, plan.ep_size + 1);
  for (int p = 0; p <= plan.ep_size; ++p) plan.block_first[p] = p * plan.local_experts;
  for (std::int64_t e = 0; e < E; ++e) {
    plan.slot_blocks[e] = {expert_offset[e] * width,
                           (expert_offset[e + 1] - expert_offset[e]) * width};
    plan.owner_blocks[e] = {plan.owner_start[e] * width, plan.recv_split[e] * width};
  }
}

}  // namespace

DispatchPlan plan_dispatch(const std::int64_t* expert_offset, std::int64_t experts,
                           std::int64_t width, comm::Communicator* ep, Arena& arena) {
  DispatchPlan plan;
  plan.experts = experts;
  plan.slots = expert_offset[experts];
  if (ep == nullptr || ep->size() == 1) {
    plan.local_experts = experts;
    plan.owner_rows = plan.slots;
    plan.local_offset = expert_offset;
    return plan;
  }
  const int P = ep->size();
  RM_CHECK(experts % P == 0, fmt::format("{} experts over {} expert-parallel ranks", experts, P));
  plan.ep_size = P;
  plan.local_experts = experts / P;
  std::int64_t* counts = alloc_array<std::int64_t>(arena, experts);
  for (std::int64_t e = 0; e < experts; ++e) counts[e] = expert_offset[e + 1] - expert_offset[e];
  // recv_split[p * L + l]: rows rank p sends to this rank's local expert l.
  plan.recv_split = alloc_array<std::int64_t>(arena, experts);
  ep->all_to_all(counts, plan.recv_split, plan.local_experts, comm::DataType::I64);
  layout_owner_rows(plan, arena);
  build_blocks(plan, expert_offset, width, arena);
  return plan;
}

template <typename T>
void dispatch_rows(const DispatchPlan& plan, comm::Communicator& ep, const T* slot_rows,
                   T* owner_rows) {
  RM_CHECK(plan.exchanges(), "dispatch_rows on a local plan");
  ep.all_to_all_blocks(slot_rows, plan.slot_blocks, plan.block_first, owner_rows, plan.owner_blocks,
                       plan.block_first, comm::datatype_of<T>());
}

template <typename T>
void combine_rows(const DispatchPlan& plan, comm::Communicator& ep, const T* owner_rows,
                  T* slot_rows) {
  RM_CHECK(plan.exchanges(), "combine_rows on a local plan");
  ep.all_to_all_blocks(owner_rows, plan.owner_blocks, plan.block_first, slot_rows, plan.slot_blocks,
                       plan.block_first, comm::datatype_of<T>());
}

#define RM_INSTANTIATE(T)                                                                 \
  template void dispatch_rows<T>(const DispatchPlan&, comm::Communicator&, const T*, T*); \
  template void combine_rows<T>(const DispatchPlan&, comm::Communicator&, const T*, T*);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
