#include "framework/error.h"

#include <fmt/format.h>
#include <hdf5.h>
#include <mpi.h>

#include <new>

namespace routemoe {

std::string_view error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Check:
      return "check";
    case ErrorKind::Shape:
      return "shape";
    case ErrorKind::Config:
      return "config";
    case ErrorKind::Data:
      return "data";
    case ErrorKind::Io:
      return "io";
    case ErrorKind::Cuda:
      return "CUDA";
    case ErrorKind::Cublas:
      return "cuBLAS";
    case ErrorKind::Nccl:
      return "NCCL";
    case ErrorKind::Mpi:
      return "MPI";
    case ErrorKind::Hdf5:
      return "HDF5";
  }
  return "unknown";
}

int current_rank() noexcept {
  int initialized = 0;
  int finalized = 0;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized) return -1;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) return -1;
  int rank = -1;
  if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS) return -1;
  return rank;
}

namespace {
std::string format_message(ErrorKind kind, int rank, const std::string& call,
                           const std::string& detail, const char* file, int line) {
  std::string where = rank >= 0 ? fmt::format("rank {}", rank) : std::string("rank 0 (no MPI)");
  std::string msg =
      fmt::format("{} error on {} at {}:{}", error_kind_name(kind), where, file, line);
  if (!call.empty()) msg += fmt::format(": {}", call);
  if (!detail.empty()) msg += fmt::format(": {}", detail);
  return msg;
}
}  // namespace

Error::Error(ErrorKind kind, std::string call, std::string detail, const char* file, int line)
    : std::runtime_error(format_message(kind, current_rank(), call, detail, file, line)),
      kind_(kind),
      call_(std::move(call)),
      detail_(std::move(detail)),
      file_(file),
      line_(line),
      rank_(current_rank()) {}

void raise_error(ErrorKind kind, std::string call, std::string detail, const char* file, int line) {
  throw Error(kind, std::move(call), std::move(detail), file, line);
}

std::string fatal_message(const std::exception& e) {
  const int rank = current_rank();
  const std::string where = rank >= 0 ? fmt::format("rank {}", rank) : "rank 0 (no MPI)";
  std::string msg;
  if (dynamic_cast<const Error*>(&e) != nullptr) {
    msg = e.what();
  } else if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    msg = fmt::format(
        "out of memory on {} ({}): the model, batch or data do not fit in this process's memory; "
        "make the model or train.batch_size smaller, raise train.grad_accum, use fewer ranks per "
        "node or spread the experts over more (parallel.ep_size); see \"Sizes and memory\" in "
        "docs/configuration.md",
        where, e.what());
  } else {
    msg = fmt::format("error on {}: {}", where, e.what());
  }
  std::string line;
  for (const char c : msg) {
    if (c == '\n') {
      line += "; ";
    } else if (c != '\r') {
      line += c;
    }
  }
  return line;
}

namespace detail {

void raise_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  throw Error(ErrorKind::Mpi, call, fmt::format("code {}: {}", code, std::string(text, len)), file,
              line);
}

namespace {
herr_t innermost_message(unsigned n, const H5E_error2_t* e, void* out) {
  // Walking upward starts at the innermost frame (where HDF5 detected the problem, e.g. a
  // checksum mismatch); keep that description.
  auto* msg = static_cast<std::string*>(out);
  if (n == 0 && e != nullptr && e->desc != nullptr) *msg = e->desc;
  return 0;
}
}  // namespace

std::string hdf5_error_message() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_message, &msg);
  return msg.empty() ? std::string("HDF5 call failed") : msg;
}

long long check_hdf5_impl(long long value, const char* call, const char* file, int line) {
  if (value >= 0) return value;
  std::string msg;
  msg = hdf5_error_message();
  throw Error(ErrorKind::Hdf5, call, msg, file, line);
}

}  // namespace detail
}  // namespace routemoe
