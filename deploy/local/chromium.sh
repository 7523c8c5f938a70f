#!/usr/bin/env bash
# Debian's Chromium for the report's browser test (tests/test_report.py), installed once from Debian's packages.
set -euo pipefail
command -v chromium >/dev/null && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -q >/dev/null 2>&1 || true  # a stale package index cannot find the current chromium
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null
chromium --version
