#!/usr/bin/env bash
# Installs what routemoe needs to build and test, on Debian 12+ / Ubuntu 22.04+.
# Idempotent: packages already installed are left alone, and nothing runs when all are present.
#
#   launch/install-deps.sh            install what is missing (as root, or through sudo)
#   launch/install-deps.sh --check    list what is missing; exit 1 if anything is
#   launch/install-deps.sh --list     print the package list (for other distributions)
#
# The CUDA Toolkit (nvcc, cuBLAS) and NCCL are optional and not installed here: the CUDA backend
# is built whenever nvcc is found (see docs/building.md).
set -euo pipefail

packages=(
  g++ cmake make pkg-config
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libfmt-dev libcli11-dev libtomlplusplus-dev libopenblas-openmp-dev libgtest-dev
  python3 python3-torch python3-h5py python3-numpy
  librsvg2-bin fonts-dejavu-core python3-pil
  clang-format universal-ctags
  slurmctld slurmd slurm-client munge iproute2
)

case "${1:-}" in
  --list)
    printf '%s\n' "${packages[@]}"
    exit 0
    ;;
  --check|"") ;;
  *)
    echo "usage: $0 [--check|--list]" >&2
    exit 2
    ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: this is not a Debian/Ubuntu system. Install the equivalents of:" >&2
  printf '  %s\n' "${packages[@]}" >&2
  echo "(MPI: Open MPI; HDF5: the parallel C library; BLAS: OpenBLAS with cblas.h; PyTorch for the reference tests)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [[ ${1:-} == --check ]]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
