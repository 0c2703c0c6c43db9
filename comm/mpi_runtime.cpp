#include "comm/mpi_runtime.h"

#include <mpi.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "framework/error.h"

namespace routemoe::comm {

void init_mpi(int* argc, char*** argv) {
  int initialized = 0;
  RM_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized) return;
  int provided = 0;
  RM_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  // Errors come back as return codes, which RM_MPI_CHECK turns into typed errors.
  RM_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

bool launched_by_mpi() noexcept {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                        "SLURM_STEP_NUM_TASKS"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

bool mpi_active() noexcept {
  int initialized = 0;
  int finalized = 0;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || MPI_Finalized(&finalized) != MPI_SUCCESS)
    return false;
  return initialized && !finalized;
}

namespace {
std::atomic<int> g_exit_status{0};
}  // namespace

void request_exit_status(int status) noexcept {
  g_exit_status.store(status);
}

int requested_exit_status() noexcept {
  return g_exit_status.load();
}

void finalize_mpi() {
  if (mpi_active()) RM_MPI_CHECK(MPI_Finalize());
  const int status = requested_exit_status();
  if (status != 0) std::exit(status);
}

int world_rank() noexcept {
  int r = 0;
  if (mpi_active() && MPI_Comm_rank(MPI_COMM_WORLD, &r) != MPI_SUCCESS) r = 0;
  return r;
}

int world_size() noexcept {
  int s = 1;
  if (mpi_active() && MPI_Comm_size(MPI_COMM_WORLD, &s) != MPI_SUCCESS) s = 1;
  return s;
}

int ranks_on_node() {
  if (!mpi_active()) return 1;
  MPI_Comm node = MPI_COMM_NULL;
  RM_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int n = 1;
  RM_MPI_CHECK(MPI_Comm_size(node, &n));
  RM_MPI_CHECK(MPI_Comm_free(&node));
  return n;
}

void abort_world(int code) noexcept {
  std::fflush(stdout);
  std::fflush(stderr);
  if (mpi_active() && world_size() == 1) {
    // A single process has no peers to release: finish MPI cleanly, then exit.
    MPI_Finalize();
    std::_Exit(code);
  }
  if (mpi_active() && world_size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace routemoe::comm
