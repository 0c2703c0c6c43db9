#include "layers/dispatch.h"

#include <vector>

#include "comm/communicator.h"

namespace routemoe::layers {

namespace {
using Block = comm::Communicator::Block;

// Blocks of one exchange direction, one per (peer, local expert) on both sides so that they
// correspond one to one: on the slot side expert l of peer p is a contiguous run of slots
// (slots are grouped by global expert); on the owner side expert l's rows from peer p start at
// owner_start[p * L + l].
template <typename T>
void slot_side(const MoeCache<T>& c, std::int64_t width, std::vector<Block>& blocks,
               std::vector<std::int64_t>& first) {
  const int P = c.ep_size;
  const std::int64_t L = c.local_experts;
  blocks.resize(static_cast<std::size_t>(P * L));
  first.resize(static_cast<std::size_t>(P) + 1);
  for (int p = 0; p < P; ++p) {
    first[static_cast<std::size_t>(p)] = p * L;
    for (std::int64_t l = 0; l < L; ++l) {
      const std::int64_t e = p * L + l;  // global expert
      blocks[static_cast<std::size_t>(e)] = {c.expert_offset[e] * width,
                                             (c.expert_offset[e + 1] - c.expert_offset[e]) * width};
    }
  }
  first[static_cast<std::size_t>(P)] = P * L;
}

template <typename T>
void owner_side(const MoeCache<T>& c, std::int64_t width, std::vector<Block>& blocks,
                std::vector<std::int64_t>& first) {
  const int P = c.ep_size;
  const std::int64_t L = c.local_experts;
  blocks.resize(static_cast<std::size_t>(P * L));
  first.resize(static_cast<std::size_t>(P) + 1);
  for (int p = 0; p < P; ++p) {
    first[static_cast<std::size_t>(p)] = p * L;
    for (std::int64_t l = 0; l < L; ++l) {
      const std::int64_t i = p * L + l;
      blocks[static_cast<std::size_t>(i)] = {c.owner_start[i] * width, c.recv_split[i] * width};
    }
  }
  first[static_cast<std::size_t>(P)] = P * L;
}
}  // namespace

template <typename T>
void plan_dispatch(MoeCache<T>& c, comm::Communicator& ep, std::int64_t E, Arena& arena) {
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
}

template <typename T>
void dispatch_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* slot_rows, T* owner_rows,
                   std::int64_t width, Arena& /*arena*/) {
  std::vector<Block> sb, rb;
  std::vector<std::int64_t> sf, rf;
  slot_side(c, width, sb, sf);
  owner_side(c, width, rb, rf);
  ep.all_to_all_blocks(slot_rows, sb.data(), sf.data(), owner_rows, rb.data(), rf.data(),
                       comm::datatype_of<T>());
}

template <typename T>
void combine_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* owner_rows, T* slot_rows,
                  std::int64_t width, Arena& /*arena*/) {
  std::vector<Block> sb, rb;
  std::vector<std::int64_t> sf, rf;
  owner_side(c, width, sb, sf);
  slot_side(c, width, rb, rf);
  ep.all_to_all_blocks(owner_rows, sb.data(), sf.data(), slot_rows, rb.data(), rf.data(),
                       comm::datatype_of<T>());
}

#define RM_INSTANTIATE(T)                                                                          \
  template void plan_dispatch<T>(MoeCache<T>&, comm::Communicator&, std::int64_t, Arena&);         \
  template void dispatch_rows<T>(const MoeCache<T>&, comm::Communicator&, const T*, T*,            \
                                 std::int64_t, Arena&);                                            \
  template void combine_rows<T>(const MoeCache<T>&, comm::Communicator&, const T*, T*,             \
                                std::int64_t, Arena&);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
