#include "layers/dispatch.h"

#include <algorithm>
#include <vector>

#include "comm/communicator.h"
#include "framework/cpu/kernels.h"

namespace routemoe::layers {

// Builds the exchange plan from the per-expert slot counts (collective over the ep group).
template <typename T>
void plan_dispatch(MoeCache<T>& c, comm::Communicator& ep, std::int64_t E, Arena& arena) {
  const int P = ep.size();
  const std::int64_t L = E / P;
  c.ep_size = P;
  c.local_experts = L;
  std::int64_t* counts = alloc_array<std::int64_t>(arena, E);
  for (std::int64_t e = 0; e < E; ++e) counts[e] = c.expert_offset[e + 1] - c.expert_offset[e];
  std::int64_t* recv_counts = alloc_array<std::int64_t>(arena, E);  // [src][l]
  ep.all_to_all(counts, recv_counts, L, comm::DataType::I64);
  c.send_rows = alloc_zeroed<std::int64_t>(arena, P);
  c.recv_rows = alloc_zeroed<std::int64_t>(arena, P);
  for (int p = 0; p < P; ++p) {
    for (std::int64_t l = 0; l < L; ++l) {
      c.send_rows[p] += counts[p * L + l];
      c.recv_rows[p] += recv_counts[p * L + l];
    }
  }
  std::vector<std::int64_t> src_begin(static_cast<std::size_t>(P) + 1, 0);
  for (int p = 0; p < P; ++p) src_begin[static_cast<std::size_t>(p) + 1] = src_begin[static_cast<std::size_t>(p)] + c.recv_rows[p];
  c.owner_rows = src_begin[static_cast<std::size_t>(P)];
  c.local_offset = alloc_array<std::int64_t>(arena, L + 1);
  c.owner_perm = alloc_array<std::int32_t>(arena, c.owner_rows);
  std::int64_t pos = 0;
  for (std::int64_t l = 0; l < L; ++l) {
    c.local_offset[l] = pos;
    for (int p = 0; p < P; ++p) {
      std::int64_t start = src_begin[static_cast<std::size_t>(p)];
      for (std::int64_t l2 = 0; l2 < l; ++l2) start += recv_counts[p * L + l2];
      for (std::int64_t r = 0; r < recv_counts[p * L + l]; ++r) c.owner_perm[pos++] = static_cast<std::int32_t>(start + r);
    }
  }
  c.local_offset[L] = pos;
}

// Slot-order rows [S, width] -> expert-major rows on the owners [R, width].
template <typename T>
void dispatch_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* slot_rows, T* owner_rows,
               std::int64_t width, Arena& arena) {
  const int P = c.ep_size;
  std::vector<std::int64_t> sc(static_cast<std::size_t>(P)), sd(static_cast<std::size_t>(P)), rc(static_cast<std::size_t>(P)), rd(static_cast<std::size_t>(P));
  std::int64_t so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    const auto i = static_cast<std::size_t>(p);
    sc[i] = c.send_rows[p] * width;
    sd[i] = so;
    so += sc[i];
    rc[i] = c.recv_rows[p] * width;
    rd[i] = ro;
    ro += rc[i];
  }
  T* recv = alloc_array<T>(arena, c.owner_rows * width);
  comm::all_to_all_v<T>(ep, slot_rows, sc.data(), sd.data(), recv, rc.data(), rd.data());
  cpu::gather_rows_forward<T>(recv, c.owner_perm, owner_rows, c.owner_rows, c.owner_rows, width);
}

// Expert-major rows on the owners [R, width] -> slot-order rows back on the sources [S, width].
template <typename T>
void combine_rows(const MoeCache<T>& c, comm::Communicator& ep, const T* owner_rows, T* slot_rows,
                std::int64_t width, Arena& arena) {
  const int P = c.ep_size;
  std::vector<std::int64_t> sc(static_cast<std::size_t>(P)), sd(static_cast<std::size_t>(P)), rc(static_cast<std::size_t>(P)), rd(static_cast<std::size_t>(P));
  std::int64_t so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    const auto i = static_cast<std::size_t>(p);
    sc[i] = c.recv_rows[p] * width;
    sd[i] = so;
    so += sc[i];
    rc[i] = c.send_rows[p] * width;
    rd[i] = ro;
    ro += rc[i];
  }
  T* send = alloc_array<T>(arena, c.owner_rows * width);
  // Inverse of the owner permutation: received-order row owner_perm[i] <- expert-major row i.
  std::fill(send, send + c.owner_rows * width, T(0));
  cpu::scatter_add_rows_forward<T>(owner_rows, c.owner_perm, nullptr, send, c.owner_rows, c.owner_rows, width);
  comm::all_to_all_v<T>(ep, send, sc.data(), sd.data(), slot_rows, rc.data(), rd.data());
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
