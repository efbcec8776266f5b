#!/usr/bin/env bash
# Debian's Prometheus for the alert rules' tests.
#
#   scripts/prometheus.sh install         install Debian's prometheus package if
#                                         promtool or prometheus is missing
#   scripts/prometheus.sh check           promtool check rules, then promtool test
#                                         rules, on deploy/prometheus
#   scripts/prometheus.sh start DIR T...  start a Prometheus server in DIR (data,
#                                         config, pid, log) on a free port of
#                                         127.0.0.1, scraping the targets T
#                                         (host:port) every second with the
#                                         waybill rules loaded; print its address
#   scripts/prometheus.sh stop DIR        stop the server started in DIR
#
# Debian's package is installed from Debian's mirrors (root, or sudo, needed),
# so a fresh CI machine needs nothing else; its systemd service is not used.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rules_dir="$root/deploy/prometheus"

die() { echo "scripts/prometheus.sh: $*" >&2; exit 1; }

install_prometheus() {
	command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && return 0
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "prometheus is not installed and we are not root: apt-get install prometheus"
		sudo="sudo"
	fi
	echo "scripts/prometheus.sh: installing prometheus from Debian's packages" >&2
	# A lock, so that parallel test binaries install once.
	(
		flock 9
		command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && exit 0
		$sudo apt-get update -qq >&2 || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2 ||
			die "apt-get install prometheus failed"
	) 9>"${TMPDIR:-/tmp}/waybill-prometheus-install.lock"
	command -v promtool >/dev/null 2>&1 || die "promtool still missing after install"
}

check() {
	install_prometheus
	promtool check rules "$rules_dir/waybill.rules.yml"
	(cd "$rules_dir" && promtool test rules waybill.rules.test.yml)
}

# ready PORT: true when the server on 127.0.0.1:PORT answers /-/ready with
# 200 (bash's /dev/tcp: curl may be absent).
ready() {
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && printf "GET /-/ready HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3' "$1" 2>/dev/null |
		grep -q " 200"
}

port_in_use() {
	timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

start() {
	local dir="${1:?usage: scripts/prometheus.sh start DIR TARGET...}"
	shift
	[[ $# -gt 0 ]] || die "start: no scrape target"
	install_prometheus
	mkdir -p "$dir/data"
	local targets="" t
	for t in "$@"; do targets+="'$t',"; done
	cat >"$dir/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $rules_dir/waybill.rules.yml
scrape_configs:
  - job_name: waybill
    static_configs:
      - targets: [${targets%,}]
CONF
	promtool check config "$dir/prometheus.yml" >/dev/null || die "generated config does not check: $dir/prometheus.yml"
	local attempt port pid i
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		port_in_use "$port" && continue
		prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
			--web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
		pid=$!
		echo "$pid" >"$dir/prometheus.pid"
		for i in $(seq 1 200); do
			if ready "$port"; then
				echo "127.0.0.1:$port"
				return 0
			fi
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	tail -n 20 "$dir/prometheus.log" >&2 2>/dev/null || true
	die "prometheus did not start (log: $dir/prometheus.log)"
}

stop() {
	local dir="${1:?usage: scripts/prometheus.sh stop DIR}"
	[[ -s "$dir/prometheus.pid" ]] || return 0
	local pid i
	pid="$(cat "$dir/prometheus.pid")"
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$dir/prometheus.pid"
}

cmd="${1:-}"
shift || true
case "$cmd" in
install) install_prometheus ;;
check) check ;;
start) start "$@" ;;
stop) stop "$@" ;;
*) die "usage: scripts/prometheus.sh install|check|start DIR TARGET...|stop DIR" ;;
esac
