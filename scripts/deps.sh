#!/usr/bin/env bash
# Installs the Debian packages ferry needs, skipping what is already installed.
#   scripts/deps.sh build   compilers, libraries and tools to build ferry
#   scripts/deps.sh test    the above, plus the servers and peers the tests start
set -euo pipefail

build_packages=(
  cmake ninja-build g++ make ccache pkg-config
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libspdlog-dev libcli11-dev libsqlite3-dev
  librdkafka-dev librabbitmq-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)
test_packages=(rabbitmq-server python3-kafka python3-pika curl sqlite3 openssl
  libcpp-httplib-dev librestinio-dev libpistache-dev python3-yaml)

case "${1:-build}" in
  build) wanted=("${build_packages[@]}") ;;
  test) wanted=("${build_packages[@]}" "${test_packages[@]}") ;;
  *) echo "usage: scripts/deps.sh build|test" >&2; exit 2 ;;
esac

missing=()
for p in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "ferry needs these Debian packages; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# rabbitmq-server's package would start a system broker; the tests start their own.
if [[ " ${missing[*]} " == *" rabbitmq-server "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
