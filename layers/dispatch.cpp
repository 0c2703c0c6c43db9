#include "layers/dispatch.h"

#include "comm/communicator.h"

namespace routemoe::layers {

template <typename T>
void plan_dispatch(MoeCache<T>& c, comm::Communicator& ep, std::int64_t E, std::int64_t width,
                   Arena& arena) {
  const int P = ep.size();
  const std::int64_t L = E / P;
  c.ep_size = P;
  c.local_experts = L;
  std::int64_t* counts = alloc_array<std::int64_t>(arena, E);
  for (std::int64_t e = 0; e < E; ++e) counts[e] = c.expert_offset[e + 1] - c.expert_offset[e];
  // recv_split[p * L + l]: rows rank p sends to this rank's local expert l.
  c.recv_split = alloc_array<std::int64_t>(arena, E);
  ep.all_to_all(counts, c.recv_split, L, comm::DataType::I64);
  c.send_rows = alloc_zeroed<std::int64_t>(arena, P);
  c.recv_rows = alloc_zeroed<std::int64_t>(arena, P);
  for (int p = 0; p < P; ++p) {
    for (std::int64_t l = 0; l < L; ++l) {
      c.send_rows[p] += counts[p * L + l];
      c.recv_rows[p] += c.recv_split[p * L + l];
    }
  }
  // Expert-major layout on the owner: expert l's block holds the rows of rank 0, then rank 1...
  c.local_offset = alloc_array<std::int64_t>(arena, L + 1);
  c.owner_start = alloc_array<std::int64_t>(arena, E);
  std::int64_t pos = 0;
  for (std::int64_t l = 0; l < L; ++l) {
    c.local_offset[l] = pos;
    for (int p = 0; p < P; ++p) {
      c.owner_start[p * L + l] = pos;
      pos += c.recv_split[p * L + l];
    }
  }
  c.local_offset[L] = pos;
  c.owner_rows = pos;
  // Blocks in one-to-one correspondence (Communicator::all_to_all_blocks): (p, l) is global
  // expert e = p * L + l, a contiguous run of slots on the token side (slots are grouped by
  // global expert) and of rows at owner_start[p * L + l] on the owner side.
  using Block = comm::Communicator::Block;
  c.slot_blocks = alloc_array<Block>(arena, E);
  c.owner_blocks = alloc_array<Block>(arena, E);
  c.block_first = alloc_array<std::int64_t>(arena, P + 1);
  for (int p = 0; p <= P; ++p) c.block_first[p] = p * L;
  for (std::int64_t e = 0; e < E; ++e) {
    c.slot_blocks[e] = {c.expert_offset[e] * width,
                        (c.expert_offset[e + 1] - c.expert_offset[e]) * width};
    c.owner_blocks[e] = {c.owner_start[e] * width, c.recv_split[e] * width};
  }
}

template <typename T>
void dispatch_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* slot_rows,
                   T* owner_rows) {
  ep.all_to_all_blocks(slot_rows, c.slot_blocks, c.block_first, owner_rows, c.owner_blocks,
                       c.block_first, comm::datatype_of<T>());
}

template <typename T>
void combine_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* owner_rows, T* slot_rows) {
  ep.all_to_all_blocks(owner_rows, c.owner_blocks, c.block_first, slot_rows, c.slot_blocks,
                       c.block_first, comm::datatype_of<T>());
}

#define RM_INSTANTIATE(T)                                                                       \
  template void plan_dispatch<T>(MoeCache<T>&, comm::Communicator&, std::int64_t, std::int64_t, \
                                 Arena&);                                                       \
  template void dispatch_rows<T>(const MoeCache<T>&, comm::Communicator&, const T*, T*);        \
  template void combine_rows<T>(const MoeCache<T>&, comm::Communicator&, const T*, T*);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
