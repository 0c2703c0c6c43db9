# Finds routemoe's dependencies. Every required one fails the configure step with the Debian
# package that provides it; launch/install-deps.sh installs all of them.
#
# Sets ROUTEMOE_HAVE_CUDA, ROUTEMOE_HAVE_NCCL, ROUTEMOE_HAVE_PARALLEL_HDF5 (each 0 or 1) and the
# imported/interface targets routemoe::mpi, routemoe::hdf5, routemoe::blas, routemoe::cuda.

function(routemoe_missing what package)
  message(FATAL_ERROR "routemoe: ${what} not found. On Debian/Ubuntu install it with\n"
                      "  sudo apt-get install ${package}\n"
                      "or run launch/install-deps.sh, which installs every dependency.")
endfunction()

# --- MPI (Open MPI) -----------------------------------------------------------------------
find_package(MPI COMPONENTS C)
if(NOT MPI_C_FOUND)
  routemoe_missing("MPI (Open MPI)" "libopenmpi-dev openmpi-bin")
endif()
add_library(routemoe_mpi INTERFACE)
target_link_libraries(routemoe_mpi INTERFACE MPI::MPI_C)
# C API only: keep mpi.h from pulling in the deprecated C++ bindings.
target_compile_definitions(routemoe_mpi INTERFACE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
add_library(routemoe::mpi ALIAS routemoe_mpi)

# --- HDF5 (parallel build preferred) --------------------------------------------------------
set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 COMPONENTS C)
if(NOT HDF5_FOUND)
  routemoe_missing("the HDF5 C library" "libhdf5-openmpi-dev hdf5-tools")
endif()
if(HDF5_IS_PARALLEL)
  set(ROUTEMOE_HAVE_PARALLEL_HDF5 1)
else()
  set(ROUTEMOE_HAVE_PARALLEL_HDF5 0)
  message(WARNING "routemoe: HDF5 is a serial build; checkpoints will be gathered to rank 0. "
                  "Install libhdf5-openmpi-dev for parallel checkpoint writes.")
endif()
add_library(routemoe_hdf5 INTERFACE)
target_include_directories(routemoe_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(routemoe_hdf5 INTERFACE ${HDF5_C_LIBRARIES} ${HDF5_LIBRARIES})
target_compile_definitions(routemoe_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} ${HDF5_DEFINITIONS})
add_library(routemoe::hdf5 ALIAS routemoe_hdf5)

# --- fmt -----------------------------------------------------------------------------------
find_package(fmt CONFIG)
if(NOT fmt_FOUND)
  routemoe_missing("fmt" "libfmt-dev")
endif()

# --- CLI11 (command-line flags) --------------------------------------------------------------
find_package(CLI11 CONFIG)
if(NOT CLI11_FOUND)
  routemoe_missing("CLI11" "libcli11-dev")
endif()

# --- toml++ (TOML 1.0 configuration files) ---------------------------------------------------
find_package(tomlplusplus CONFIG)
if(NOT tomlplusplus_FOUND OR NOT TARGET tomlplusplus::tomlplusplus)
  routemoe_missing("toml++ (TOML 1.0 parser)" "libtomlplusplus-dev")
endif()

# --- CBLAS (OpenBLAS, OpenMP build preferred) -------------------------------------------
# The CPU kernels use OpenMP; an OpenBLAS built on its own pthread pool makes the two thread
# pools spin against each other (a training step several times slower on 2 cores), so the
# OpenMP build of OpenBLAS (Debian: libopenblas-openmp-dev) is preferred.
find_path(ROUTEMOE_BLAS_INCLUDE cblas.h
          PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
find_library(ROUTEMOE_BLAS_LIBRARIES NAMES openblas
             PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
if(NOT ROUTEMOE_BLAS_INCLUDE OR NOT ROUTEMOE_BLAS_LIBRARIES)
  unset(ROUTEMOE_BLAS_INCLUDE CACHE)
  unset(ROUTEMOE_BLAS_LIBRARIES CACHE)
  find_package(OpenBLAS CONFIG QUIET)
  if(OpenBLAS_FOUND)
    set(ROUTEMOE_BLAS_INCLUDE ${OpenBLAS_INCLUDE_DIRS})
    set(ROUTEMOE_BLAS_LIBRARIES ${OpenBLAS_LIBRARIES})
  else()
    find_path(ROUTEMOE_BLAS_INCLUDE cblas.h PATH_SUFFIXES openblas openblas-pthread)
    find_library(ROUTEMOE_BLAS_LIBRARIES NAMES openblas)
  endif()
  if(ROUTEMOE_BLAS_LIBRARIES)
    message(WARNING "routemoe: using ${ROUTEMOE_BLAS_LIBRARIES}, not the OpenMP build of OpenBLAS; "
                    "its threads compete with OpenMP's. Install libopenblas-openmp-dev.")
  endif()
endif()
if(NOT ROUTEMOE_BLAS_INCLUDE OR NOT ROUTEMOE_BLAS_LIBRARIES)
  routemoe_missing("a CBLAS (OpenBLAS)" "libopenblas-openmp-dev")
endif()
message(STATUS "routemoe: BLAS ${ROUTEMOE_BLAS_LIBRARIES}")
add_library(routemoe_blas INTERFACE)
target_include_directories(routemoe_blas SYSTEM INTERFACE ${ROUTEMOE_BLAS_INCLUDE})
target_link_libraries(routemoe_blas INTERFACE ${ROUTEMOE_BLAS_LIBRARIES})
add_library(routemoe::blas ALIAS routemoe_blas)

# --- OpenMP (CPU kernels) ------------------------------------------------------------------
find_package(OpenMP COMPONENTS CXX)
if(NOT OpenMP_CXX_FOUND)
  routemoe_missing("OpenMP for C++" "libgomp1 (part of g++)")
endif()

# --- GoogleTest (tests only) ---------------------------------------------------------------
if(ROUTEMOE_BUILD_TESTS)
  find_package(GTest)
  if(NOT GTest_FOUND)
    routemoe_missing("GoogleTest" "libgtest-dev")
  endif()
endif()

# --- CUDA Toolkit + cuBLAS (optional), NCCL (optional, with CUDA) --------------------------
set(ROUTEMOE_HAVE_CUDA 0)
set(ROUTEMOE_HAVE_NCCL 0)
if(NOT ROUTEMOE_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "routemoe: ROUTEMOE_CUDA must be AUTO, ON or OFF (got '${ROUTEMOE_CUDA}')")
endif()
if(NOT ROUTEMOE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER)
    find_program(ROUTEMOE_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH
                 PATHS /usr/local/cuda/bin PATH_SUFFIXES bin)
    if(ROUTEMOE_NVCC)
      set(CMAKE_CUDA_COMPILER "${ROUTEMOE_NVCC}" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # 'native' needs a visible GPU; without one, build for Ampere and Hopper explicitly.
      execute_process(COMMAND nvidia-smi -L RESULT_VARIABLE _rm_smi OUTPUT_QUIET ERROR_QUIET)
      if(_rm_smi EQUAL 0)
        set(CMAKE_CUDA_ARCHITECTURES native)
      else()
        set(CMAKE_CUDA_ARCHITECTURES 80 90)
      endif()
    endif()
    enable_language(CUDA)
    # CMake 3.25 cannot pass C++20 to nvcc; the .cu sources and the headers they include are
    # C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    if(NOT TARGET CUDA::cublas)
      message(FATAL_ERROR "routemoe: cuBLAS not found in the CUDA Toolkit at ${CUDAToolkit_LIBRARY_DIR}")
    endif()
    set(ROUTEMOE_HAVE_CUDA 1)
    find_path(ROUTEMOE_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME
              PATH_SUFFIXES include)
    find_library(ROUTEMOE_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR}
                 ${CUDAToolkit_LIBRARY_ROOT}/lib ENV NCCL_HOME PATH_SUFFIXES lib lib64)
    if(ROUTEMOE_NCCL_INCLUDE AND ROUTEMOE_NCCL_LIBRARY)
      set(ROUTEMOE_HAVE_NCCL 1)
    else()
      message(STATUS "routemoe: NCCL not found; the NCCL backend is disabled "
                     "(install libnccl-dev or set NCCL_HOME)")
    endif()
  elseif(ROUTEMOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "routemoe: ROUTEMOE_CUDA=ON but nvcc was not found. Install the CUDA "
                        "Toolkit (Debian: nvidia-cuda-toolkit) or set CUDACXX, or use ROUTEMOE_CUDA=OFF.")
  endif()
endif()

add_library(routemoe_cuda INTERFACE)
if(ROUTEMOE_HAVE_CUDA)
  # cuBLAS is loaded at run time (framework/cuda/cublas_api.cpp), not linked: its headers only.
  target_link_libraries(routemoe_cuda INTERFACE CUDA::cudart ${CMAKE_DL_LIBS})
  if(ROUTEMOE_HAVE_NCCL)
    target_include_directories(routemoe_cuda SYSTEM INTERFACE ${ROUTEMOE_NCCL_INCLUDE})
    target_link_libraries(routemoe_cuda INTERFACE ${ROUTEMOE_NCCL_LIBRARY})
  endif()
endif()
add_library(routemoe::cuda ALIAS routemoe_cuda)

# Feature macros, always defined as 0 or 1, for every routemoe target.
add_library(routemoe_features INTERFACE)
target_compile_definitions(routemoe_features INTERFACE
  ROUTEMOE_HAVE_CUDA=${ROUTEMOE_HAVE_CUDA}
  ROUTEMOE_HAVE_NCCL=${ROUTEMOE_HAVE_NCCL}
  ROUTEMOE_HAVE_PARALLEL_HDF5=${ROUTEMOE_HAVE_PARALLEL_HDF5})
target_include_directories(routemoe_features INTERFACE ${PROJECT_SOURCE_DIR})
