#!/usr/bin/env bash
# Installs the real servers the integration tests talk to, from Debian's
# packages, when this is a Debian machine and we are root. With
# IMWATCH_INTEGRATION=1 a server that is still missing fails the run.
set -euo pipefail

# packages[i] provides binaries[i].
packages=(nats-server prometheus prometheus prometheus-node-exporter prometheus-alertmanager prosody prosody mosquitto mosquitto openssl chromium firefox-esr)
binaries=(nats-server promtool prometheus prometheus-node-exporter prometheus-alertmanager prosody prosodyctl mosquitto mosquitto_passwd openssl chromium firefox-esr)

missing=()
for i in "${!binaries[@]}"; do
	command -v "${binaries[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
# One package can provide several binaries: name it once.
if ((${#missing[@]})); then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ((${#missing[@]})); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
		echo "test-deps: installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	else
		echo "test-deps: missing ${missing[*]} and cannot apt-get install (not root or not Debian)" >&2
	fi
fi

for b in "${binaries[@]}"; do
	if ! command -v "$b" >/dev/null 2>&1; then
		if [[ ${IMWATCH_INTEGRATION:-} == 1 ]]; then
			echo "test-deps: $b is required with IMWATCH_INTEGRATION=1" >&2
			exit 1
		fi
		echo "test-deps: $b missing: its integration tests will be skipped" >&2
	fi
done
