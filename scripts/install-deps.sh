#!/usr/bin/env bash
# Installs every Debian package LLMIR needs to build and test.
# Idempotent: when everything is already there it prints nothing and exits 0.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential clang-15 cmake ninja-build ccache git pkg-config
  # MLIR / LLVM 15 (dialect, TableGen, FileCheck, lit)
  llvm-15-dev llvm-15-tools libmlir-15-dev mlir-15-tools
  # lit is a Python module; FileCheck comes with llvm-15-tools
  python3
  # serialisation, config, networking, kernels
  libprotobuf-dev protobuf-compiler libyaml-cpp-dev libboost1.81-dev
  libopenblas-dev libpcre2-dev libucx-dev ucx-utils libgloo-dev
  # kv store: SHA-256 block keys (OpenSSL), XXH3 block checksums
  libssl-dev libxxhash-dev
  prometheus-cpp-dev
  # HMAC-SHA256 and random nonces for the internal plane's handshake
  # (libs/support ClusterAuth; only libcrypto is linked)
  libssl-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # promtool and a Prometheus server for the metrics tests
  prometheus
  # native libraries that MLIR's CMake config expects to find
  zlib1g-dev libzstd-dev libtinfo-dev libxml2-dev libedit-dev libffi-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
