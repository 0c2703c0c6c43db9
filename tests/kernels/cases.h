#pragma once
// The kernel test table: one list of cases covering every kernel of framework/cpu/kernels.h and
// its CUDA twin in framework/cuda/kernels.h, and every kernel of framework/cpu/moe_kernels.h
// (moe_cases.cpp; no CUDA twins yet), and the three drivers that run it:
//   test_reference.cpp  (a) the CPU kernel, in float and in double, against a naive double
//                           reference, with the fp32/fp64 rounding bounds of support.h;
//   test_gradcheck.cpp  (b) every backward against central finite differences of its forward,
//                           the kernels instantiated in double (a few also in float);
//   test_gpu_parity.cpp (c) the CUDA twin against the CPU kernel in fp32 (skipped without a GPU).
//
// A case is one kernel (usually a forward and its backward) at one size with one set of options:
// its name, an input generator, the CPU call (one generic lambda, instantiated for float and
// double), the CUDA call (only when ROUTEMOE_HAVE_CUDA, see below), and a naive double reference
// that gives,
// for every output element, the exact value and its tolerances: the rounding bound of the CPU
// kernel against the reference (`ck` and `mag`, support.h) and the allowed CUDA-vs-CPU
// difference (`gpu`), each derived next to the formula.
//
// The arrays of a case have names. The generator fills them (inputs, outputs pre-filled with NaN
// when the kernel overwrites them, random when it accumulates into them, kSentinel when it must
// not write them); calls and references look them up by name. After every call the drivers check
// that
//   - each output the reference lists is within its tolerance;
//   - every other array is bitwise unchanged (inputs, and outputs the call must not write);
//   - nothing was written past the end of any array (each is followed by a guard of kSentinel;
//     index arrays by kBadIndex, so reading past the end throws).
// An alias makes two names share memory (in-place forms such as softmax with y == x).
//
// Integer outputs (top-k indices, kept flags, slot counts and offsets) are declared with
// Rule::Exact and compared as integers. A kernel without a CUDA twin (the MoE kernels of
// framework/cpu/moe_kernels.h, for now) is marked `cuda_twin = false`: driver (c) reports it as
// skipped ("no CUDA twin"), never as passed.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tests/kernels/support.h"

// The CUDA calls exist only where the build has CUDA and the target asks for them
// (ROUTEMOE_KERNEL_TEST_CUDA, set by tests/CMakeLists.txt): the table is compiled twice, with
// them for the GPU parity driver and without them for the CPU drivers, which then do not load
// the CUDA libraries at all.
#if ROUTEMOE_HAVE_CUDA && ROUTEMOE_KERNEL_TEST_CUDA
#define ROUTEMOE_KERNEL_CASES_CUDA 1
namespace routemoe::cuda {
class Context;
}
#else
#define ROUTEMOE_KERNEL_CASES_CUDA 0
#endif

namespace routemoe::kerneltest {

// How the drivers store an array.
enum class Kind {
  Value,  // the type under test (float or double)
  Wide,   // double whatever the type (a result the kernel accumulates in double); host memory
  Index,  // int32 (token ids, row indices, targets)
  Long,   // int64 (slot counts and offsets; host memory)
  Byte,   // uint8 (kept flags)
};

// The arrays of a case, in double (indices as int32): what the generator produces, and what the
// references see (the values as stored in the type under test, just before the call).
class Data {
 public:
  struct Array {
    Kind kind = Kind::Value;
    std::vector<double> values;  // Value, Wide
    std::vector<i32> ids;        // Index
    std::vector<i64> ints;       // Long, Byte
    std::string storage;         // non-empty: an alias of that array
  };

  // Creates (or replaces) an array of n elements set to `fill` and returns its contents.
  std::vector<double>& value(const std::string& name, i64 n, double fill = kNaN);
  std::vector<double>& wide(const std::string& name, i64 n, double fill = kNaN);
  std::vector<i32>& index(const std::string& name, i64 n, i32 fill = 0);
  std::vector<i64>& longs(const std::string& name, i64 n, i64 fill = 0);
  // Values in [0, 255].
  std::vector<i64>& bytes(const std::string& name, i64 n, i64 fill = 0);
  // `name` shares the memory of `storage` (which must not itself be an alias).
  void alias(const std::string& name, const std::string& storage);

  bool has(const std::string& name) const;
  // The values of a Value or Wide array (through an alias).
  const std::vector<double>& operator[](const std::string& name) const;
  std::vector<double>& values(const std::string& name);
  const std::vector<i32>& ids(const std::string& name) const;
  // The values of a Long or Byte array.
  const std::vector<i64>& ints(const std::string& name) const;
  // The array that holds the memory of `name` (itself unless an alias).
  const std::string& storage_of(const std::string& name) const;
  const std::map<std::string, Array>& arrays() const { return arrays_; }
  // The names, kinds and aliases without the contents.
  Data shape() const;

 private:
  const Array& at(const std::string& name) const;
  std::map<std::string, Array> arrays_;
};

// Pointers to a case's arrays as a call sees them: host memory for the CPU calls, device memory
// for the CUDA calls (Wide arrays are always host memory). Aliases give the same pointer.
template <typename T>
class Bind {
 public:
  using value_type = T;
  void set(const std::string& name, void* ptr) { ptrs_[name] = ptr; }
  // A Value array the case must have.
  T* operator[](const std::string& name) const { return static_cast<T*>(get(name)); }
  // A Value array, or nullptr when the case has none of that name (optional arguments).
  T* opt(const std::string& name) const {
    const auto it = ptrs_.find(name);
    return it == ptrs_.end() ? nullptr : static_cast<T*>(it->second);
  }
  i32* ids(const std::string& name) const { return static_cast<i32*>(get(name)); }
  double* wide(const std::string& name) const { return static_cast<double*>(get(name)); }
  i64* longs(const std::string& name) const { return static_cast<i64*>(get(name)); }
  std::uint8_t* bytes(const std::string& name) const {
    return static_cast<std::uint8_t*>(get(name));
  }

 private:
  void* get(const std::string& name) const;
  std::map<std::string, void*> ptrs_;
};

// The expected contents of one output element.
struct Want {
  double value = 0.0;  // exact result (double reference from the inputs as stored)
  double ck = 0.0;     // c * K of the rounding bound of the CPU kernel (support.h)
  double mag = 0.0;    // S, the absolute magnitude of the computation
  double gpu = 0.0;    // allowed |CUDA - CPU| (absolute; 0: equal)
};

enum class Rule {
  Rounded,  // |cpu - value| <= bound<T>(ck) * mag
  Exact,    // cpu == T(value) bitwise (copies); integer arrays: cpu == value
  Wide,     // |cpu - value| <= bound_wide(ck) * mag (accumulated in double for either type)
};

// The outputs of one call, as the reference expects them.
class Expect {
 public:
  struct Output {
    Rule rule = Rule::Rounded;
    std::vector<Want> want;
  };
  // Declares output `name` (n elements) and returns its elements to fill.
  std::vector<Want>& out(const std::string& name, i64 n, Rule rule = Rule::Rounded);
  const std::map<std::string, Output>& outputs() const { return outputs_; }

 private:
  std::map<std::string, Output> outputs_;
};

template <typename T>
using CpuFn = std::function<void(const Bind<T>&)>;

// The CPU call of a pass, for both instantiations. Built from one generic lambda:
// cpu_call([=](const auto& b) { using T = ElemOf<decltype(b)>; cpu::kernel<T>(b["x"], ...); }).
struct CpuCall {
  CpuFn<float> f32;
  CpuFn<double> f64;
  template <typename T>
  const CpuFn<T>& get() const {
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else {
      return f64;
    }
  }
};
template <typename F>
CpuCall cpu_call(F f) {
  return {CpuFn<float>(f), CpuFn<double>(f)};
}
// The element type of a Bind (in a generic call lambda: ElemOf<decltype(b)>).
template <typename B>
using ElemOf = typename std::remove_cvref_t<B>::value_type;

#if ROUTEMOE_KERNEL_CASES_CUDA
using CudaFn = std::function<void(const cuda::Context&, const Bind<float>&)>;
#endif

// One kernel call: forward or backward.
struct Pass {
  CpuCall cpu;
#if ROUTEMOE_KERNEL_CASES_CUDA
  CudaFn cuda;
#endif
  // Fills the expected outputs from the arrays as they are just before the call.
  std::function<void(const Data& in, Expect& out)> reference;
};

struct Case {
  std::string kernel;  // the group the drivers report under: "softmax", "gemm", ...
  std::string name;    // sizes and options; unique within the kernel
  std::function<void(Gen&, Data&)> generate;
  Pass forward;
  // The backward reads what the forward saved (softmax y, layernorm mean/rstd, cross-entropy
  // lse). Driver (a) gives it the reference's forward values rounded to T, so that it is checked
  // independently of the forward kernel; drivers (b) and (c) the CPU forward's.
  std::optional<Pass> backward;
  // An empty batch: both calls must be no-ops (every array unchanged, no index read); there is no
  // reference.
  bool noop = false;
  // The CPU result must not depend on the thread count: driver (a) also runs the calls with 1 and
  // 2 threads and compares every array bitwise.
  bool threads = false;
  // Sized for the CUDA launch geometry (millions of elements, more rows than grid blocks): only
  // driver (c) runs it. The CPU kernel takes the same code path (parallel over rows or column
  // blocks) at the smaller sizes that driver (a) checks, and a case this size would make the
  // unit tests slow.
  bool gpu_scale = false;
  // The kernel has a CUDA twin (and the case a CUDA call): driver (c) runs it. false: driver (c)
  // lists the kernel as skipped, "no CUDA twin".
  bool cuda_twin = true;
  // Gradient check (driver b; small sizes). L = sum over `loss` pairs (forward output y, the
  // upstream gradient array dy the backward reads) of sum_k dy_k y_k; each `grads` pair (input,
  // gradient the backward writes) is compared with central differences of L.
  bool fd = false;
  bool fd_float = false;  // also in float, with the float step and tolerance
  std::vector<std::pair<std::string, std::string>> loss, grads;
};

// The table, built once.
const std::vector<Case>& cases();
// The cases of the MoE-layer and router kernels (framework/cpu/moe_kernels.h), appended to `t`
// (moe_cases.cpp; part of the table).
void moe_cases(std::vector<Case>& t);
// Helpers of the table's files: marks an empty-batch case (every array must stay unchanged, no
// reference); " word" when `on` (for case names).
void set_noop(Case& c);
std::string flag(bool on, const char* word);
// The cases of the fused kernels (framework/cpu/fused.cpp; no CUDA twins), appended to `t`
// (cases_fused.cpp; part of the table).
void fused_cases(std::vector<Case>& t);
// The distinct kernel names of the cases that satisfy `pred`, in table order.
std::vector<std::string> kernels(const std::function<bool(const Case&)>& pred);

// Host memory for a case's arrays in the type under test, each followed by a guard.
template <typename T>
class HostArrays {
 public:
  static constexpr i64 kGuard = 16;

  explicit HostArrays(const Data& data);
  // Copies every array of `data` (same layout) into this memory (rounding to T); guards reset.
  void load(const Data& data);
  // The arrays as they are now, in double.
  Data snapshot() const;
  Bind<T> bind();
  // The data region of a Value array, as stored.
  std::span<const T> values(const std::string& name) const;
  std::span<T> values(const std::string& name);
  std::span<const double> wide(const std::string& name) const;
  std::span<const i32> ids(const std::string& name) const;
  std::span<const i64> longs(const std::string& name) const;
  std::span<const std::uint8_t> bytes(const std::string& name) const;
  std::span<double> wide(const std::string& name);
  // Sets the data region of any non-Wide array from doubles, converted to its storage type
  // (the forward's outputs as the reference gives them, before driver (a) runs a backward).
  void assign(const std::string& name, std::span<const double> v);
  // Raw storage with the guard, by storage array (for device copies and bitwise comparisons).
  const std::vector<T>& raw_values(const std::string& storage) const { return vals_.at(storage); }
  std::vector<T>& raw_values(const std::string& storage) { return vals_.at(storage); }
  const std::vector<i32>& raw_ids(const std::string& storage) const { return ids_.at(storage); }
  std::vector<i32>& raw_ids(const std::string& storage) { return ids_.at(storage); }
  const std::vector<i64>& raw_longs(const std::string& storage) const { return longs_.at(storage); }
  const std::vector<std::uint8_t>& raw_bytes(const std::string& storage) const {
    return bytes_.at(storage);
  }
  // The names, kinds and aliases of the arrays (no contents).
  const Data& layout() const { return *layout_; }
  // Empty when every guard holds its fill value, else the names of the overwritten guards.
  std::string broken_guards() const;

 private:
  std::shared_ptr<const Data> layout_;
  std::map<std::string, std::vector<T>> vals_;
  std::map<std::string, std::vector<double>> wides_;
  std::map<std::string, std::vector<i32>> ids_;
  std::map<std::string, std::vector<i64>> longs_;
  std::map<std::string, std::vector<std::uint8_t>> bytes_;
};

// The checks shared by the drivers: the outputs `expect` lists against the reference with the
// bound of the type under test (driver a).
template <typename T>
void expect_outputs(const HostArrays<T>& got, const Expect& expect, const std::string& what);
// Every storage array that no output of `expect` lives in is bitwise unchanged from `before`.
template <typename T>
void expect_untouched(const HostArrays<T>& got, const HostArrays<T>& before, const Expect& expect,
                      const std::string& what);
// Every array (all storage) bitwise equal.
template <typename T>
void expect_same_arrays(const HostArrays<T>& a, const HostArrays<T>& b, const std::string& what);

}  // namespace routemoe::kerneltest
