#!/usr/bin/env bash
# Installs the services the test-suite starts its own instances of, from the OS packages, when missing.
set -euo pipefail
need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The broker's rate-limit plugin (config/mosquitto/ratelimit/) is compiled by the tests that load it.
[ -f /usr/include/mosquitto_plugin.h ] || need+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# libfaketime: tests/edge/test_run_faketime.py steps the wall clock under `liftguard run` (issue 15).
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -eq 0 ]; then
  echo "services: all present"
  exit 0
fi
echo "services: installing ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
}
