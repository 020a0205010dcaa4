#!/usr/bin/env bash
# System packages fairyc uses beyond the Rust toolchain, installed with apt
# when missing:
# - LLVM 19 (required): inkwell links it to generate the CPU kernels and the
#   GPU backend's PTX. .cargo/config.toml points the build at /usr/lib/llvm-19.
# - The aarch64 cross toolchain and qemu (required by `make test`): the
#   aarch64 kernels are linked into a harness and run under qemu-aarch64.
# - DejaVu Sans (optional): the labels of training plots.
set -uo pipefail
required=()
[ -x /usr/lib/llvm-19/bin/llvm-config ] || required+=(llvm-19-dev libpolly-19-dev zlib1g-dev libzstd-dev)
command -v aarch64-linux-gnu-gcc >/dev/null || required+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || required+=(qemu-user)
optional=()
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || optional+=(fonts-dejavu-core)
[ ${#required[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
install() {
  command -v apt-get >/dev/null || return 1
  $sudo apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  # A fresh machine's package lists may be empty: refresh once, then retry.
  $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1
}

if [ ${#required[@]} -gt 0 ]; then
  if install "${required[@]}"; then
    echo "installed ${required[*]}"
  else
    echo "error: could not install ${required[*]} (apt-get as root): fairyc needs LLVM 19 at /usr/lib/llvm-19 to build, and its tests the aarch64 cross toolchain and qemu-user" >&2
    exit 1
  fi
fi
if [ ${#optional[@]} -gt 0 ]; then
  if install "${optional[@]}"; then
    echo "installed ${optional[*]}"
  else
    echo "warning: could not install ${optional[*]} (apt-get as root); plots will have no labels" >&2
  fi
fi
