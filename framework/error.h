#pragma once
// Typed errors for routemoe. Every error carries the failing call (or condition), the source
// location, and the MPI rank of the process that raised it, so that a message printed by any
// rank of a multi-node job says where and on which rank it went wrong.

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace routemoe {

enum class ErrorKind {
  Check,   // a violated precondition or invariant (RM_CHECK)
  Shape,   // tensor shapes/dtypes/devices that do not fit together
  Config,  // bad configuration value or flag
  Data,    // bad input data file
  Io,      // file system error
  Cuda,    // CUDA runtime
  Cublas,  // cuBLAS
  Nccl,    // NCCL
  Mpi,     // MPI
  Hdf5,    // HDF5
};

std::string_view error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  // what() is "<kind> error on rank R at file:line: <call>: <detail>".
  Error(ErrorKind kind, std::string call, std::string detail, const char* file, int line);

  ErrorKind kind() const noexcept { return kind_; }
  const std::string& call() const noexcept { return call_; }
  const std::string& detail() const noexcept { return detail_; }
  const std::string& file() const noexcept { return file_; }
  int line() const noexcept { return line_; }
  // MPI world rank of the raising process, or -1 when MPI was not initialised.
  int rank() const noexcept { return rank_; }

 private:
  ErrorKind kind_;
  std::string call_;
  std::string detail_;
  std::string file_;
  int line_;
  int rank_;
};

// MPI world rank of this process, or -1 if MPI is not (or no longer) initialised. Queries MPI
// each time; there is no cached state.
int current_rank() noexcept;

[[noreturn]] void raise_error(ErrorKind kind, std::string call, std::string detail,
                              const char* file, int line);

// The one line a process prints for the exception that ends it: an Error's message (which
// names the rank), any other exception prefixed with the rank, std::bad_alloc as "out of memory
// on rank R" with what to change. Line breaks inside a message are folded into "; ".
std::string fatal_message(const std::exception& e);

}  // namespace routemoe

// RM_CHECK(cond, detail): throws Error(Check) naming the condition when it is false.
#define RM_CHECK(cond, detail)                                                                    \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      ::routemoe::raise_error(::routemoe::ErrorKind::Check, #cond, (detail), __FILE__, __LINE__); \
  } while (0)

// RM_CHECK_KIND(kind, cond, detail): as RM_CHECK with a specific error kind.
#define RM_CHECK_KIND(kind, cond, detail)                                                        \
  do {                                                                                           \
    if (!(cond))                                                                                 \
      ::routemoe::raise_error(::routemoe::ErrorKind::kind, #cond, (detail), __FILE__, __LINE__); \
  } while (0)

// RM_FAIL(kind, detail): unconditional error of the given kind.
#define RM_FAIL(kind, detail) \
  ::routemoe::raise_error(::routemoe::ErrorKind::kind, "", (detail), __FILE__, __LINE__)

// RM_MPI_CHECK(call): MPI return codes other than MPI_SUCCESS throw Error(Mpi) with the MPI
// error string. Needs <mpi.h>; declared here so every layer spells it the same way.
#define RM_MPI_CHECK(call)                                                        \
  do {                                                                            \
    const int rm_mpi_rc_ = (call);                                                \
    if (rm_mpi_rc_ != 0)                                                          \
      ::routemoe::detail::raise_mpi_error(rm_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// RM_HDF5_CHECK(call): HDF5 calls return a negative value on failure; returns the value.
#define RM_HDF5_CHECK(call) ::routemoe::detail::check_hdf5((call), #call, __FILE__, __LINE__)

namespace routemoe::detail {
[[noreturn]] void raise_mpi_error(int code, const char* call, const char* file, int line);
// The innermost message of the current HDF5 error stack ("HDF5 call failed" when empty).
std::string hdf5_error_message();
// Returns `value` when it is >= 0, else throws Error(Hdf5) with HDF5's innermost error message.
long long check_hdf5_impl(long long value, const char* call, const char* file, int line);
template <typename T>
T check_hdf5(T value, const char* call, const char* file, int line) {
  return static_cast<T>(check_hdf5_impl(static_cast<long long>(value), call, file, line));
}
}  // namespace routemoe::detail
