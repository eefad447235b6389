#!/usr/bin/env bash
# Builds gauntlet with the `cuda` feature, so a change that breaks the GPU build fails here
# even on a machine without a GPU. Installs Debian's nvidia-cuda-toolkit when nvcc is missing.
#
#   CUDA_COMPUTE_CAP   GPU architecture the kernels are compiled for (default 80). Required:
#                      without a GPU, candle-kernels cannot ask the driver for it.
#   CUDAFORGE_THREADS  parallel nvcc jobs in candle-kernels' build script (default 2).
#   CUDA_TARGET_DIR    cargo target dir (default target/cuda, apart from the usual target/).
#   CHECK_CUDA_MODE    build (default): release binary + every test compiled with the feature;
#                      check: `cargo check` of the same targets (still runs nvcc, links nothing).
#
# With the feature built and no GPU present, it also runs the device-selection and GPU tests:
# they must report "no device" and skip, not crash.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
CUDA_TARGET_DIR="${CUDA_TARGET_DIR:-target/cuda}"
CHECK_CUDA_MODE="${CHECK_CUDA_MODE:-build}"
CARGO="${CARGO:-cargo}"

say() { echo "check-cuda: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

find_nvcc() {
	if [[ -n "${NVCC:-}" ]]; then
		echo "$NVCC"
	elif command -v nvcc >/dev/null 2>&1; then
		command -v nvcc
	elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
		echo "$CUDA_HOME/bin/nvcc"
	elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
		echo /usr/local/cuda/bin/nvcc
	fi
}

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "installing the CUDA toolkit needs root (no sudo found); install nvcc yourself or set NVCC"
	fi
}

# Debian ships nvcc in nvidia-cuda-toolkit, in the contrib and non-free components, which a
# default install does not enable: add them for the installed suite in a file of our own.
install_toolkit() {
	[[ -r /etc/os-release ]] || die "nvcc not found and no /etc/os-release: install the CUDA toolkit yourself"
	# shellcheck disable=SC1091
	. /etc/os-release
	[[ "${ID:-}" == debian && -n "${VERSION_CODENAME:-}" ]] ||
		die "nvcc not found; automatic install covers Debian only (this is ${PRETTY_NAME:-unknown}): install the CUDA toolkit yourself"
	local list=/etc/apt/sources.list.d/gauntlet-cuda-nonfree.sources
	if ! apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		say "enabling contrib non-free non-free-firmware for $VERSION_CODENAME in $list"
		as_root tee "$list" >/dev/null <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
		as_root apt-get update
	fi
	# Recommends would add the profilers (~0.5 GB) and build the driver's kernel module (DKMS);
	# the build needs neither. libcuda1 (the driver library the binary links to) is a dependency.
	say "installing nvidia-cuda-toolkit (about 2 GB to download)"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nvidia-cuda-toolkit
}

nvcc_bin="$(find_nvcc)"
if [[ -z "$nvcc_bin" ]]; then
	install_toolkit
	nvcc_bin="$(find_nvcc)"
	[[ -n "$nvcc_bin" ]] || die "nvidia-cuda-toolkit installed but nvcc is still not on PATH"
fi
say "nvcc: $nvcc_bin ($("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p'))"

[[ "$CUDA_COMPUTE_CAP" =~ ^[0-9]+[a-z]?$ ]] ||
	die "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP: expected a compute capability like 80 or 86"
# An architecture nvcc does not know (CUDA 11.8 stops at 89) fails deep in the kernel build.
if arches="$("$nvcc_bin" --list-gpu-arch 2>/dev/null)" &&
	! grep -qx "compute_$CUDA_COMPUTE_CAP" <<<"$arches"; then
	die "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP: this nvcc supports $(sed 's/compute_//' <<<"$arches" | tr '\n' ' ')"
fi
[[ "$CUDAFORGE_THREADS" =~ ^[1-9][0-9]*$ ]] ||
	die "CUDAFORGE_THREADS=$CUDAFORGE_THREADS: expected a positive whole number"

export CUDA_COMPUTE_CAP CUDAFORGE_THREADS NVCC="$nvcc_bin"
export CARGO_TARGET_DIR="$CUDA_TARGET_DIR"
say "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$CUDAFORGE_THREADS CARGO_TARGET_DIR=$CARGO_TARGET_DIR mode=$CHECK_CUDA_MODE"

# `--features gauntlet/cuda` turns on candle's cuda backend for every crate built alongside,
# so all library and test code is compiled against it.
case "$CHECK_CUDA_MODE" in
build)
	"$CARGO" build --release -p gauntlet --features cuda
	"$CARGO" test --release --workspace --exclude gauntlet-python --features gauntlet/cuda --no-run
	# Without a GPU these must pass by reporting the missing device; a binary that cannot
	# even load the CUDA libraries fails here.
	"$CARGO" test --release -p gauntlet --features cuda --bin gauntlet -- device::
	"$CARGO" test --release -p gauntlet --features cuda --test gpu
	;;
check)
	"$CARGO" check --release --workspace --exclude gauntlet-python --all-targets --features gauntlet/cuda
	;;
*) die "CHECK_CUDA_MODE=$CHECK_CUDA_MODE: expected build or check" ;;
esac
say "ok in ${SECONDS} s"
