#!/usr/bin/env bash
# Installs Debian packages, only those missing: the ones given as arguments, or (without
# arguments) the ones the test suite needs. The tests start their own private Dovecot, Postfix and
# (when no server is named) PostgreSQL under a temporary folder; the system services are never
# used.
set -euo pipefail
if [ $# -gt 0 ]; then
  wanted=("$@")
else
  wanted=(dovecot-imapd dovecot-lmtpd postfix postgresql openssl ca-certificates chromium)
fi
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "Please install these packages (no apt-get here): ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "Run as root, or install sudo, to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the packages' system services from starting: the tests run their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
# Postfix asks how to configure the system's mail: "No configuration" (the tests write their
# own main.cf under a temporary folder; the system's is never used).
if command -v debconf-set-selections >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
