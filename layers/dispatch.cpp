#include "layers/dispatch.h"

#include <fmt/format.h>

#include <vector>

#include "framework/error.h"
#include "framework/timer.h"

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

namespace {

using Requests = std::vector<comm::Communicator::Request>;

// Requests of the blocks of `blocks` (indexed peer * L + l) of local expert l (irecv into `buf`
// or isend from it), skipping empty ones (both sides skip the same blocks: counts match).
template <typename T>
void post_expert(comm::Communicator& ep, const DispatchPlan& plan,
                 const comm::Communicator::Block* blocks, std::int64_t l, int tag, T* recv_buf,
                 const T* send_buf, Requests& out) {
  const int P = plan.ep_size, me = ep.rank();
  const std::int64_t L = plan.local_experts;
  for (int k = 1; k <= P; ++k) {  // start with the next rank: spreads the load
    const int peer = (me + k) % P;
    const comm::Communicator::Block& b = blocks[peer * L + l];
    if (b.count == 0) continue;
    if (recv_buf != nullptr) {
      out.push_back(ep.irecv(recv_buf + b.displ, b.count, comm::datatype_of<T>(), peer, tag));
    } else {
      out.push_back(ep.isend(send_buf + b.displ, b.count, comm::datatype_of<T>(), peer, tag));
    }
  }
}

// Completes `reqs` if they already have (test), forgetting them; keeps them otherwise.
void test_drop(comm::Communicator& ep, Requests& reqs) {
  if (!reqs.empty() && ep.test(reqs)) reqs.clear();
}

}  // namespace

template <typename T>
double exchange_overlapped(const DispatchPlan& plan, comm::Communicator& ep, const T* slot_in,
                           T* owner_in, T* owner_out, T* slot_out,
                           const std::function<void(std::int64_t)>& compute) {
  RM_CHECK(plan.exchanges(), "exchange_overlapped on a local plan");
  const std::int64_t L = plan.local_experts;
  RM_CHECK(2 * L <= comm::Communicator::kMaxTag,
           fmt::format("exchange_overlapped: {} local experts need more tags than a "
                       "communicator has",
                       L));
  // Tags: l for the rows of local expert l on the way out, L + l on the way back.
  std::vector<Requests> arrive(static_cast<std::size_t>(L));
  Requests back_in, out, back_out;
  for (std::int64_t l = 0; l < L; ++l) {
    post_expert<T>(ep, plan, plan.owner_blocks, l, static_cast<int>(l), owner_in, nullptr,
                   arrive[static_cast<std::size_t>(l)]);
    post_expert<T>(ep, plan, plan.slot_blocks, l, static_cast<int>(L + l), slot_out, nullptr,
                   back_in);
  }
  for (std::int64_t l = 0; l < L; ++l) {
    post_expert<T>(ep, plan, plan.slot_blocks, l, static_cast<int>(l), nullptr, slot_in, out);
  }
  double compute_s = 0.0;
  for (std::int64_t l = 0; l < L; ++l) {
    ep.wait(arrive[static_cast<std::size_t>(l)]);
    Timer t;
    compute(l);
    compute_s += t.seconds();
    post_expert<T>(ep, plan, plan.owner_blocks, l, static_cast<int>(L + l), nullptr, owner_out,
                   back_out);
    test_drop(ep, out);
    test_drop(ep, back_out);
  }
  ep.wait(back_in);
  ep.wait(out);
  ep.wait(back_out);
  return compute_s;
}

#define RM_INSTANTIATE(T)                                                                        \
  template void dispatch_rows<T>(const DispatchPlan&, comm::Communicator&, const T*, T*);        \
  template void combine_rows<T>(const DispatchPlan&, comm::Communicator&, const T*, T*);         \
  template double exchange_overlapped<T>(const DispatchPlan&, comm::Communicator&, const T*, T*, \
                                         T*, T*, const std::function<void(std::int64_t)>&);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
