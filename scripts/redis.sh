#!/usr/bin/env bash
# Private Redis for tests and local runs.
#
#   scripts/redis.sh start   start (or reuse) the server; print its address
#   scripts/redis.sh addr    print the running server's address; fail if none
#   scripts/redis.sh stop    stop it
#
# The server listens on a free port of 127.0.0.1, keeps nothing on disk (no RDB,
# no AOF), runs daemonized with a pidfile, and lives in .cache/redis/ under the
# repository root. When redis-server is missing it is installed from Debian's
# packages (root, or sudo, needed), so a fresh CI machine needs nothing else.
# Concurrent callers (parallel test binaries) are serialized with flock, and all
# share one server.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/redis"
pidfile="$dir/redis.pid"
addrfile="$dir/addr"
logfile="$dir/redis.log"
lockfile="$dir/lock"

die() { echo "scripts/redis.sh: $*" >&2; exit 1; }

# ping HOST PORT: true when a Redis server answers PONG there.
ping() {
	local reply=""
	if command -v redis-cli >/dev/null 2>&1; then
		reply="$(timeout 2 redis-cli -h "$1" -p "$2" ping 2>/dev/null || true)"
	else
		# Bash's /dev/tcp speaks RESP inline commands well enough for PING.
		reply="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && head -c 5 <&3' "$1" "$2" 2>/dev/null || true)"
	fi
	[[ "$reply" == *PONG* ]]
}

# running: true when our pidfile names a live process and the recorded address answers.
running() {
	[[ -s "$pidfile" && -s "$addrfile" ]] || return 1
	local pid addr
	pid="$(cat "$pidfile")"
	addr="$(cat "$addrfile")"
	kill -0 "$pid" 2>/dev/null || return 1
	ping "${addr%:*}" "${addr##*:}"
}

install_redis() {
	command -v redis-server >/dev/null 2>&1 && return 0
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "redis-server is not installed and we are not root: apt-get install redis-server"
		sudo="sudo"
	fi
	echo "scripts/redis.sh: installing redis-server from Debian's packages" >&2
	$sudo apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >&2 ||
		die "apt-get install redis-server failed"
	command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
	timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

start() {
	if running; then
		cat "$addrfile"
		return 0
	fi
	install_redis
	rm -f "$pidfile" "$addrfile"
	local attempt port pid i
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		port_in_use "$port" && continue
		redis-server \
			--bind 127.0.0.1 --port "$port" \
			--daemonize yes --pidfile "$pidfile" \
			--dir "$dir" --logfile "$logfile" \
			--save "" --appendonly no \
			--databases 16 >/dev/null 9>&- ||
			continue
		# (9>&-: the daemon must not inherit the lock.)
		# Daemonized, the server binds after forking: a taken port only shows
		# as a child that exits, so wait for PONG or for the child to die.
		for i in $(seq 1 100); do
			if ping 127.0.0.1 "$port"; then
				echo "127.0.0.1:$port" >"$addrfile"
				cat "$addrfile"
				return 0
			fi
			if [[ -s "$pidfile" ]]; then
				pid="$(cat "$pidfile")"
				kill -0 "$pid" 2>/dev/null || break
			fi
			sleep 0.1
		done
		# Never answered: make sure it is gone before trying another port.
		[[ -s "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
		rm -f "$pidfile"
	done
	tail -n 20 "$logfile" >&2 2>/dev/null || true
	die "redis-server did not start (log: $logfile)"
}

stop() {
	[[ -s "$pidfile" ]] || { rm -f "$addrfile"; return 0; }
	local pid i
	pid="$(cat "$pidfile")"
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile" "$addrfile"
}

cmd="${1:-}"
case "$cmd" in
start | stop | addr) ;;
*) die "usage: scripts/redis.sh start|stop|addr" ;;
esac

mkdir -p "$dir"
exec 9>"$lockfile"
flock 9

case "$cmd" in
start) start ;;
stop) stop ;;
addr) running || die "not running; run scripts/redis.sh start"; cat "$addrfile" ;;
esac
