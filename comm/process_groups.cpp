// Expert-parallel process groups (comm/communicator.h, docs/parallelism.md).

#include <string>
#include <utility>

#include "comm/communicator.h"
#include "framework/error.h"

namespace routemoe::comm {

ProcessGroups ProcessGroups::create(std::unique_ptr<Communicator> world, int ep_size,
                                    bool shared_memory) {
  RM_CHECK(world != nullptr, "ProcessGroups::create: no world communicator");
  const int n = world->size();
  const int r = world->rank();
  // Every rank sees the same ep_size and world size, so all of them throw (no rank is left
  // waiting in a split).
  if (ep_size <= 0 || n % ep_size != 0) {
    RM_FAIL(Config, "ep_size = " + std::to_string(ep_size) +
                        " must be a positive divisor of the number of ranks (" + std::to_string(n) +
                        ")");
  }
  ProcessGroups g;
  g.ep_size = ep_size;
  // Expert-parallel group: the contiguous block [g*ep, (g+1)*ep) that together holds all experts.
  g.ep = world->split(r / ep_size, r);
  // Expert-data-parallel group: the ranks r' with r' % ep == r % ep (replicas of the same experts).
  g.edp = world->split(r % ep_size, r);
  RM_CHECK(g.ep->size() == ep_size && g.ep->rank() == r % ep_size,
           "ProcessGroups::create: expert-parallel group has the wrong shape");
  RM_CHECK(g.edp->size() == n / ep_size && g.edp->rank() == r / ep_size,
           "ProcessGroups::create: expert-data-parallel group has the wrong shape");
  g.ep->enable_shared_memory(shared_memory);
  g.world = std::move(world);
  return g;
}

void ProcessGroups::release() {
  if (edp) edp->release();
  if (ep) ep->release();
  if (world) world->release();
}

}  // namespace routemoe::comm
