#!/usr/bin/env bash
# Runs `pulse bench` (docs/BENCHMARKS.md): installs redis-server through apt when it is missing,
# builds pulse in release mode, and passes every argument on (`--json`, `--scenarios`, ...).
# pulse bench starts its own redis-server on a free loopback port and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server
  # The package starts a system service; the bench uses its own server, so stop that one.
  $SUDO systemctl stop redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

cargo build --release --locked -p pulse
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)" >&2
exec ./target/release/pulse bench "$@"
