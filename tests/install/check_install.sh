#!/usr/bin/env bash
# Installs ferry from BUILD_DIR into a temporary prefix, then builds and runs a project that
# uses it twice: through find_package(ferry) and through pkg-config.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/ferry/broker.hpp"
test -f "$work/prefix/lib/cmake/ferry/ferryConfig.cmake"
test -f "$work/prefix/lib/pkgconfig/ferry.pc"
test -x "$work/prefix/bin/ferry"

cmake -S "$source_dir/tests/install/consumer" -B "$work/cmake-build" -G Ninja \
      -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
"$work/cmake-build/consumer"

export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
c++ -std=c++20 "$source_dir/tests/install/consumer/main.cpp" -o "$work/pkg-consumer" $(pkg-config --cflags --libs ferry)
"$work/pkg-consumer"
echo "install check passed"
