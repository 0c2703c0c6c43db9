// Single-process backend: a communicator of one rank (CPU buffers) that copies where the others
// exchange and does nothing where they reduce or synchronise. Needs no MPI. Also holds the
// backend-independent helpers of comm/communicator.h.

#include <algorithm>
#include <cstring>
#include <list>
#include <set>
#include <span>
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

  Request isend(const void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    check_p2p("isend", count, peer, tag);
    const Request id = next_++;
    sends_.push_back({id, buf, nullptr, count, type, tag});
    match();
    return id;
  }

  Request irecv(void* buf, std::int64_t count, DataType type, int peer, int tag) override {
    check_p2p("irecv", count, peer, tag);
    const Request id = next_++;
    recvs_.push_back({id, nullptr, buf, count, type, tag});
    match();
    return id;
  }

  void wait(std::span<const Request> requests) override {
    for (const Request id : requests) {
      RM_CHECK(done_.count(id) > 0,
               "self communicator: wait on request " + std::to_string(id) +
                   " that has no matching send or receive (it would never complete)");
    }
    for (const Request id : requests) done_.erase(id);
  }

  bool test(std::span<const Request> requests) override {
    for (const Request id : requests) {
      if (done_.count(id) == 0) return false;
    }
    for (const Request id : requests) done_.erase(id);
    return true;
  }

  std::unique_ptr<Communicator> split(int color, int) const override {
    RM_CHECK(color >= 0,
             "self communicator: split color " + std::to_string(color) + " is negative");
    return std::make_unique<SelfCommunicator>();
  }

 private:
  struct Message {
    Request id;
    const void* src;  // sends
    void* dst;        // receives
    std::int64_t count;
    DataType type;
    int tag;
  };

  static void check_p2p(const char* what, std::int64_t count, int peer, int tag) {
    check_count(count, what);
    RM_CHECK(peer == 0, std::string("self communicator: ") + what + " peer " +
                            std::to_string(peer) + " is not a rank of a size-1 communicator");
    RM_CHECK(tag >= 0 && tag < kMaxTag, std::string("self communicator: ") + what + " tag " +
                                            std::to_string(tag) + " is outside [0, " +
                                            std::to_string(kMaxTag) + ")");
  }

  // Pairs the oldest send and receive of each tag (MPI's matching order) and copies.
  void match() {
    for (auto s = sends_.begin(); s != sends_.end();) {
      auto r = std::find_if(recvs_.begin(), recvs_.end(),
                            [&](const Message& m) { return m.tag == s->tag; });
      if (r == recvs_.end()) {
        ++s;
        continue;
      }
      RM_CHECK(s->count <= r->count && s->type == r->type,
               "self communicator: a send of " + std::to_string(s->count) +
                   " elements matched a receive of " + std::to_string(r->count) +
                   " (or of another type) under tag " + std::to_string(s->tag));
      copy_elements(r->dst, s->src, s->count, s->type);
      done_.insert(s->id);
      done_.insert(r->id);
      recvs_.erase(r);
      s = sends_.erase(s);
    }
  }

  std::list<Message> sends_, recvs_;  // started, not yet matched
  std::set<Request> done_;            // matched, not yet waited for
  Request next_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_self() {
  return std::make_unique<SelfCommunicator>();
}

Communicator::Request Communicator::isend(const void*, std::int64_t, DataType, int, int) {
  RM_FAIL(Check, backend() + " communicator: isend is not implemented");
}

Communicator::Request Communicator::irecv(void*, std::int64_t, DataType, int, int) {
  RM_FAIL(Check, backend() + " communicator: irecv is not implemented");
}

void Communicator::wait(std::span<const Request>) {
  RM_FAIL(Check, backend() + " communicator: wait is not implemented");
}

bool Communicator::test(std::span<const Request>) {
  RM_FAIL(Check, backend() + " communicator: test is not implemented");
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
