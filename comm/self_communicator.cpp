// Single-process backend: a communicator of one rank (CPU buffers) that copies where the others
// exchange and does nothing where they reduce or synchronise. Needs no MPI. Also holds the
// backend-independent helpers of comm/communicator.h.

#include <cstring>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/error.h"

namespace routemoe::comm {

std::size_t datatype_size(DataType t) {
  switch (t) {
    case DataType::F32:
      return 4;
    case DataType::F64:
      return 8;
    case DataType::I32:
      return 4;
    case DataType::I64:
      return 8;
    case DataType::U8:
      return 1;
  }
  RM_FAIL(Check, "unknown comm::DataType " + std::to_string(static_cast<int>(t)));
}

namespace {

void check_count(std::int64_t v, const char* what) {
  RM_CHECK(v >= 0,
           std::string("self communicator: ") + what + " = " + std::to_string(v) + " is negative");
}

// Copies `count` elements; memmove so that send and recv may be the same buffer.
void copy_elements(void* dst, const void* src, std::int64_t count, DataType type) {
  if (count == 0 || dst == src) return;
  std::memmove(dst, src, static_cast<std::size_t>(count) * datatype_size(type));
}

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return "self"; }

  void all_reduce(void*, std::int64_t count, DataType type, ReduceOp) override {
    check_count(count, "all_reduce count");
    datatype_size(type);  // rejects an invalid type as the other backends do
  }

  void all_gather(const void* send, void* recv, std::int64_t count, DataType type) override {
    check_count(count, "all_gather count");
    copy_elements(recv, send, count, type);
  }

  void all_to_all(const void* send, void* recv, std::int64_t count, DataType type) override {
    check_count(count, "all_to_all count");
    copy_elements(recv, send, count, type);
  }

  void all_to_all_v(const void* send, const std::int64_t* send_counts,
                    const std::int64_t* send_displs, void* recv, const std::int64_t* recv_counts,
                    const std::int64_t* recv_displs, DataType type) override {
    RM_CHECK(send_counts && send_displs && recv_counts && recv_displs,
             "self communicator: all_to_all_v count/displacement arrays must not be null");
    check_count(send_counts[0], "all_to_all_v send_counts[0]");
    check_count(send_displs[0], "all_to_all_v send_displs[0]");
    check_count(recv_counts[0], "all_to_all_v recv_counts[0]");
    check_count(recv_displs[0], "all_to_all_v recv_displs[0]");
    RM_CHECK(send_counts[0] == recv_counts[0],
             "self communicator: all_to_all_v sends " + std::to_string(send_counts[0]) +
                 " elements to itself but expects to receive " + std::to_string(recv_counts[0]));
    const std::size_t es = datatype_size(type);
    copy_elements(static_cast<char*>(recv) + recv_displs[0] * static_cast<std::int64_t>(es),
                  static_cast<const char*>(send) + send_displs[0] * static_cast<std::int64_t>(es),
                  send_counts[0], type);
  }

  void broadcast(void*, std::int64_t count, DataType, int root) override {
    check_count(count, "broadcast count");
    RM_CHECK(root == 0, "self communicator: broadcast root " + std::to_string(root) +
                            " is not a rank of a size-1 communicator");
  }

  void barrier() override {}

  std::unique_ptr<Communicator> split(int color, int) const override {
    RM_CHECK(color >= 0,
             "self communicator: split color " + std::to_string(color) + " is negative");
    return std::make_unique<SelfCommunicator>();
  }
};

}  // namespace

std::unique_ptr<Communicator> make_self() {
  return std::make_unique<SelfCommunicator>();
}

void Communicator::all_to_all_blocks(const void* send, const Block* send_blocks,
                                     const std::int64_t* send_first, void* recv,
                                     const Block* recv_blocks, const std::int64_t* recv_first,
                                     DataType type) {
  RM_CHECK(device() == Device::CPU,
           backend() + " communicator: all_to_all_blocks on device buffers is not implemented");
  const int n = size();
  const std::size_t esize = datatype_size(type);
  std::vector<std::int64_t> sc(static_cast<std::size_t>(n), 0), sd(static_cast<std::size_t>(n), 0),
      rc(static_cast<std::size_t>(n), 0), rd(static_cast<std::size_t>(n), 0);
  std::int64_t stotal = 0, rtotal = 0;
  for (int r = 0; r < n; ++r) {
    const auto i = static_cast<std::size_t>(r);
    sd[i] = stotal;
    for (std::int64_t b = send_first[r]; b < send_first[r + 1]; ++b) sc[i] += send_blocks[b].count;
    stotal += sc[i];
    rd[i] = rtotal;
    for (std::int64_t b = recv_first[r]; b < recv_first[r + 1]; ++b) rc[i] += recv_blocks[b].count;
    rtotal += rc[i];
  }
  std::vector<char> packed(static_cast<std::size_t>(stotal) * esize),
      unpacked(static_cast<std::size_t>(rtotal) * esize);
  char* out = packed.data();
  for (std::int64_t b = 0; b < send_first[n]; ++b) {
    const auto bytes = static_cast<std::size_t>(send_blocks[b].count) * esize;
    if (bytes > 0)
      std::memcpy(
          out,
          static_cast<const char*>(send) + static_cast<std::size_t>(send_blocks[b].displ) * esize,
          bytes);
    out += bytes;
  }
  all_to_all_v(packed.data(), sc.data(), sd.data(), unpacked.data(), rc.data(), rd.data(), type);
  const char* in = unpacked.data();
  for (std::int64_t b = 0; b < recv_first[n]; ++b) {
    const auto bytes = static_cast<std::size_t>(recv_blocks[b].count) * esize;
    if (bytes > 0)
      std::memcpy(static_cast<char*>(recv) + static_cast<std::size_t>(recv_blocks[b].displ) * esize,
                  in, bytes);
    in += bytes;
  }
}

}  // namespace routemoe::comm
