// Runtime core: errors, tensors, arenas, Philox RNG, bf16 conversion.

#include <gtest/gtest.h>

#if ROUTEMOE_HAVE_CUDA
#include "framework/cuda/cublas_api.h"
#endif
#include <hdf5.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>

#include "framework/arena.h"
#include "framework/error.h"
#include "framework/rng.h"
#include "framework/tensor.h"

namespace routemoe {
namespace {

TEST(Error, MessageNamesKindLocationRankAndCall) {
  try {
    RM_CHECK(1 + 1 == 3, "arithmetic is broken");
    FAIL() << "RM_CHECK did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::Check);
    EXPECT_NE(msg.find("test_runtime.cpp:"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 + 1 == 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("arithmetic is broken"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 0"), std::string::npos) << msg;  // no MPI: reported as rank 0
    EXPECT_EQ(e.rank(), -1);
    EXPECT_GT(e.line(), 0);
  }
}

// User errors read as one line without the source location or the C++ condition (issue 13);
// --verbose and internal errors keep them. Config and Data errors exit with 2, others with 1.
TEST(Error, UserMessageHidesLocationUnlessVerbose) {
  try {
    RM_CHECK_KIND(Config, 1 + 1 == 3, "model.d_model must be even; change it");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(user_message(e, false, false), "config error: model.d_model must be even; change it");
    const std::string verbose = user_message(e, true, false);
    EXPECT_NE(verbose.find("test_runtime.cpp:"), std::string::npos) << verbose;
    EXPECT_NE(verbose.find("1 + 1 == 3"), std::string::npos) << verbose;
    EXPECT_EQ(exit_status_for(e), kExitUsage);
  }
  try {
    RM_CHECK(2 < 1, "internal");
    FAIL() << "no throw";
  } catch (const Error& e) {
    const std::string msg = user_message(e, false, false);
    EXPECT_NE(msg.find("test_runtime.cpp:"), std::string::npos) << msg;
    EXPECT_EQ(exit_status_for(e), kExitInternal);
  }
  try {
    RM_FAIL(Io, "cannot write x: disk full");
  } catch (const Error& e) {
    EXPECT_EQ(user_message(e, false, false), "io error: cannot write x: disk full");
    EXPECT_EQ(exit_status_for(e), kExitInternal);
  }
  EXPECT_EQ(exit_status_for(std::runtime_error("x")), kExitInternal);
}

TEST(Error, Hdf5FailureCarriesHdf5Message) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // keep HDF5 from printing its own stack
  try {
    RM_HDF5_CHECK(H5Fopen("/nonexistent/dir/file.h5", H5F_ACC_RDONLY, H5P_DEFAULT));
    FAIL() << "H5Fopen of a missing file did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Hdf5);
    EXPECT_NE(std::string(e.what()).find("H5Fopen"), std::string::npos) << e.what();
    EXPECT_FALSE(e.detail().empty());
  }
}

TEST(Error, Hdf5ErrorMessageIsTheInnermostFrame) {
  // The one walker of HDF5's error stack (detail::hdf5_error_message, used by h5::File and
  // `routemoe inspect`) reports where HDF5 detected the problem, not the outer "unable to open
  // file" frames.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string path = ::testing::TempDir() + "routemoe_test_runtime_not_hdf5.h5";
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("this is not HDF5\n", f);
    std::fclose(f);
  }
  EXPECT_LT(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), 0);
  EXPECT_EQ(detail::hdf5_error_message(), "file signature not found");
  std::remove(path.c_str());
  // An empty stack (a call that succeeded) has no innermost frame.
  H5Eclear2(H5E_DEFAULT);
  EXPECT_EQ(detail::hdf5_error_message(), "HDF5 call failed");
}

TEST(Tensor, ShapeReshapeSlice) {
  Tensor t = Tensor::zeros({4, 3});
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.dim(-1), 3);
  EXPECT_EQ(t.str(), "f32[4, 3]@cpu");
  float* p = t.data<float>();
  for (int i = 0; i < 12; ++i) p[i] = static_cast<float>(i);
  Tensor r = t.reshape({2, -1});
  EXPECT_EQ(r.shape(), (Shape{2, 6}));
  EXPECT_EQ(r.data<float>(), p);  // a view
  Tensor s = t.slice_rows(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3}));
  EXPECT_EQ(s.data<float>()[0], 3.0f);
  EXPECT_THROW(t.reshape({5, -1}), Error);
  EXPECT_THROW(t.slice_rows(2, 5), Error);
  EXPECT_THROW(t.dim(2), Error);
  EXPECT_THROW(t.data<bf16>(), Error);
}

TEST(Tensor, ZeroSizeTensorsAreValid) {
  Tensor t = Tensor::empty({0, 8});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 0);
  Tensor c = t.clone();
  EXPECT_EQ(c.shape(), (Shape{0, 8}));
  Tensor r = t.reshape({0, 4, 2});
  EXPECT_EQ(r.numel(), 0);
}

TEST(Tensor, CloneIsDeepAndCopyChecksShape) {
  Tensor a = Tensor::from_vector({2, 2}, {1, 2, 3, 4});
  Tensor b = a.clone();
  b.data<float>()[0] = 9;
  EXPECT_EQ(a.data<float>()[0], 1.0f);
  Tensor wrong = Tensor::zeros({4});
  EXPECT_THROW(wrong.copy_from(a), Error);
}

TEST(Bf16, RoundToNearestEvenAndRoundTrip) {
  // 1 + 2^-8 lies exactly between bf16 neighbours 1 and 1 + 2^-7: ties to even gives 1.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  // 1 + 3*2^-8 is a tie between 1+2^-7 and 1+2^-6: even mantissa is 1+2^-6.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))),
            1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
  Tensor t = Tensor::from_vector({3}, {0.5f, -2.0f, 3.140625f});  // all exact in bf16
  EXPECT_EQ(t.to(DType::BF16).to(DType::F32).to_vector(), t.to_vector());
}

TEST(Arena, AlignsCountsAndMergesOnReset) {
  Arena arena("activations", Device::CPU, 1024);
  Tensor a = arena.alloc({3});
  Tensor b = arena.alloc({5});
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.raw()) % Arena::kAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.raw()) % Arena::kAlignment, 0u);
  EXPECT_NE(a.raw(), b.raw());
  Tensor big = arena.alloc({4096});  // does not fit: a second block
  EXPECT_EQ(arena.stats().blocks, 2u);
  const std::size_t peak = arena.stats().peak;
  EXPECT_EQ(peak,
            2 * Arena::kAlignment + 4096 * sizeof(float));  // 3 and 5 floats round up to 256 B
  arena.reset();
  const ArenaStats s = arena.stats();
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.used, 0u);
  EXPECT_EQ(s.capacity, peak);  // one block of the peak size: the next step fits without growing
  arena.alloc({3});
  arena.alloc({5});
  arena.alloc({4096});
  EXPECT_EQ(arena.stats().blocks, 1u);
  Tensor z = arena.zeros({7});
  for (float v : z.to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_NE(format_arena_report({arena.stats()}).find("activations"), std::string::npos);
}

// rewind(mark()) releases what was allocated since the mark: the next allocation reuses the
// memory, the logical peak does not grow, and a mark from before a rewind's point cannot be
// rewound to afterwards in the wrong direction.
TEST(Arena, RewindReleasesScratchAboveAMark) {
  Arena arena("activations", Device::CPU, 4096);
  Tensor kept = arena.alloc({16});
  const Arena::Mark m = arena.mark();
  Tensor scratch = arena.alloc({200});
  const std::size_t peak = arena.stats().peak;
  arena.rewind(m);
  EXPECT_EQ(arena.stats().used, Arena::kAlignment);  // `kept` only
  Tensor again = arena.alloc({200});
  EXPECT_EQ(again.raw(), scratch.raw());  // the same memory, reused
  EXPECT_EQ(arena.stats().peak, peak);
  // Across a block added after the mark: rewound too; reset merges to the peak.
  const Arena::Mark m2 = arena.mark();
  arena.alloc({8192});
  EXPECT_EQ(arena.stats().blocks, 2u);
  arena.rewind(m2);
  EXPECT_EQ(arena.stats().used, Arena::kAlignment + 1024u);  // kept + again (800 B -> 1024)
  EXPECT_THROW(arena.rewind(Arena::Mark{5, 0, 0}), Error);   // not a mark of this arena's past
  arena.reset();
  EXPECT_EQ(arena.stats().blocks, 1u);
}

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
TEST(Philox, KnownAnswers) {
  PhiloxBlock z = philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(z.v[0], 0x6627e8d5u);
  EXPECT_EQ(z.v[1], 0xe169c58du);
  EXPECT_EQ(z.v[2], 0xbc57ac4cu);
  EXPECT_EQ(z.v[3], 0x9b00dbd8u);
  PhiloxBlock f = philox4x32_10(~0u, ~0u, ~0u, ~0u, ~0u, ~0u);
  EXPECT_EQ(f.v[0], 0x408f276du);
  EXPECT_EQ(f.v[1], 0x41c83b0eu);
  EXPECT_EQ(f.v[2], 0xa20bc7c6u);
  EXPECT_EQ(f.v[3], 0x6d5451fdu);
  PhiloxBlock p =
      philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(p.v[0], 0xd16cfe09u);
  EXPECT_EQ(p.v[1], 0x94fdccebu);
  EXPECT_EQ(p.v[2], 0x5001e420u);
  EXPECT_EQ(p.v[3], 0x24126ea1u);
}

TEST(Philox, FillsAreSliceableAndStreamsIndependent) {
  // A rank holding rows [2, 5) of a [6, 7] tensor draws exactly those rows of the whole.
  Tensor whole = Tensor::empty({6, 7});
  fill_normal(whole, 42, 3, 0.0f, 0.02f);
  Tensor part = Tensor::empty({3, 7});
  fill_normal(part, 42, 3, 0.0f, 0.02f, /*index_offset=*/2 * 7);
  Tensor expect = whole.slice_rows(2, 5);
  EXPECT_EQ(part.to_vector(), expect.to_vector());
  Tensor other = Tensor::empty({6, 7});
  fill_normal(other, 42, 4, 0.0f, 0.02f);
  EXPECT_NE(other.to_vector(), whole.to_vector());
}

TEST(Philox, NormalAndUniformMoments) {
  // 2^16 samples: the sample mean of N(0,1) has sd 1/256, the sample variance sd ~ sqrt(2/n)
  // = 0.0055; bounds of 5 sd fail a correct generator with probability < 1e-6.
  const std::int64_t n = 1 << 16;
  Tensor t = Tensor::empty({n});
  fill_normal(t, 7, 0, 0.0f, 1.0f);
  double s = 0, s2 = 0;
  for (float v : t.to_vector()) {
    s += v;
    s2 += static_cast<double>(v) * v;
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5.0 / 256.0);
  EXPECT_NEAR(var, 1.0, 5.0 * 0.0056);
  fill_uniform(t, 7, 1, -1.0f, 1.0f);
  double u = 0;
  for (float v : t.to_vector()) {
    EXPECT_GE(v, -1.0f);
    EXPECT_LT(v, 1.0f);
    u += v;
  }
  EXPECT_NEAR(u / n, 0.0, 5.0 * std::sqrt(1.0 / 3.0 / n));
}

TEST(Philox, SequentialStreamIsReproducibleAndBounded) {
  Philox a(1, 2), b(1, 2);
  std::set<std::uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t x = a.next_below(10);
    EXPECT_EQ(x, b.next_below(10));
    EXPECT_LT(x, 10u);
    seen.insert(x);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(a.counter(), 1000u);
}

#if ROUTEMOE_HAVE_CUDA
// cuBLAS is loaded at run time (framework/cuda/cublas_api.h): every entry point the backend
// calls must resolve in the library the build found. Needs the library, not a GPU.
TEST(CublasLoader, ResolvesEveryEntryPoint) {
  const cuda::blas::Api& a = cuda::blas::api();
  EXPECT_NE(a.create, nullptr);
  EXPECT_NE(a.destroy, nullptr);
  EXPECT_NE(a.set_stream, nullptr);
  EXPECT_NE(a.set_math_mode, nullptr);
  EXPECT_NE(a.sgemm, nullptr);
  EXPECT_NE(a.sgemm_strided_batched, nullptr);
}
#endif

}  // namespace
}  // namespace routemoe
