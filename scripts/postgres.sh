#!/usr/bin/env bash
# Private PostgreSQL for tests and local runs (the monolith path).
#
#   scripts/postgres.sh start   start (or reuse) the server; print its URL
#   scripts/postgres.sh url     print the running server's URL; fail if none
#   scripts/postgres.sh stop    stop it
#
# The server is Debian's postgresql, installed from Debian's packages when
# missing (root, or sudo, needed), with its own data directory, listening on
# a free port of 127.0.0.1 only (no Unix socket), user "waybill" trusted on
# loopback, database "waybill". Its state lives in .cache/postgres/ under the
# repository root; PostgreSQL refuses to run as root, so when we are root the
# server runs as the "postgres" user the package creates, with its data in a
# directory that user can reach (/var/tmp/waybill-postgres.<hash>/).
#
# fsync is off: the tests kill clients, never the server, and a lost
# server is a lost test database, not lost data. Authentication is "trust"
# on 127.0.0.1: it is a test server, for this machine's users only; never
# point it at data you keep. Concurrent callers
# (parallel test binaries) are serialized with flock, and all share one server.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/postgres"
urlfile="$dir/url"
lockfile="$dir/lock"

die() { echo "scripts/postgres.sh: $*" >&2; exit 1; }

if [[ "$(id -u)" == 0 ]]; then
	data="/var/tmp/waybill-postgres.$(printf %s "$root" | md5sum | cut -c1-12)"
else
	data="$dir/data"
fi
logfile="$data.log"

bindir() {
	local d
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
	[[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] || return 1
	echo "$d"
}

# as_owner CMD...: run CMD as the user that owns the server.
as_owner() {
	if [[ "$(id -u)" == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

install_postgres() {
	bindir >/dev/null && return 0
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "postgresql is not installed and we are not root: apt-get install postgresql"
		sudo="sudo"
	fi
	echo "scripts/postgres.sh: installing postgresql from Debian's packages" >&2
	$sudo apt-get update -qq >&2 || die "apt-get update failed"
	# The package's own cluster is not ours: keep it from being created
	# and started, so nothing listens on 5432 because of us.
	$sudo mkdir -p /etc/postgresql-common/createcluster.d
	echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/waybill.conf >/dev/null
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >&2 ||
		die "apt-get install postgresql failed"
	bindir >/dev/null || die "initdb still missing after install"
}

# ready URL: true when the server at URL's port accepts connections.
ready() {
	local port="${1##*:}"
	port="${port%%/*}"
	"$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2
}

running() {
	[[ -s "$urlfile" && -s "$data/postmaster.pid" ]] || return 1
	bindir >/dev/null || return 1
	ready "$(cat "$urlfile")"
}

port_in_use() {
	timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

start() {
	if running; then
		cat "$urlfile"
		return 0
	fi
	install_postgres
	local bin attempt port url
	bin="$(bindir)"
	rm -f "$urlfile"
	# A server of ours may still run on a port we no longer know.
	if [[ -s "$data/postmaster.pid" ]]; then
		as_owner "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
	fi
	# A data directory of another major version cannot be started by this
	# one: it holds only test data, so make it again.
	if [[ -s "$data/PG_VERSION" && "$(cat "$data/PG_VERSION")" != "$(basename "$(dirname "$bin")")" ]]; then
		echo "scripts/postgres.sh: $data is PostgreSQL $(cat "$data/PG_VERSION"), not $(basename "$(dirname "$bin")"): making it again" >&2
		rm -rf "$data"
	fi
	if [[ ! -s "$data/PG_VERSION" ]]; then
		rm -rf "$data"
		mkdir -p "$data"
		[[ "$(id -u)" == 0 ]] && chown postgres:postgres "$data"
		as_owner "$bin/initdb" -D "$data" -U waybill --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
			{ tail -n 20 "$dir/initdb.log" >&2; die "initdb failed (log: $dir/initdb.log)"; }
	fi
	touch "$logfile"
	[[ "$(id -u)" == 0 ]] && chown postgres:postgres "$logfile"
	for attempt in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		port_in_use "$port" && continue
		# (9>&-: the server must not inherit the lock.)
		if as_owner "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 -o \
			"-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
			start >/dev/null 9>&-; then
			url="postgres://waybill@127.0.0.1:$port/waybill?sslmode=disable"
			if ! "$bin/psql" -q -X -h 127.0.0.1 -p "$port" -U waybill -d postgres -tAc \
				"SELECT 1 FROM pg_database WHERE datname = 'waybill'" | grep -q 1; then
				"$bin/createdb" -h 127.0.0.1 -p "$port" -U waybill waybill || die "createdb waybill failed"
			fi
			echo "$url" >"$urlfile"
			cat "$urlfile"
			return 0
		fi
		as_owner "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
	done
	tail -n 20 "$logfile" >&2 2>/dev/null || true
	die "postgres did not start (log: $logfile)"
}

stop() {
	local bin
	if bin="$(bindir)" && [[ -s "$data/postmaster.pid" ]]; then
		as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
			as_owner "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
	fi
	rm -f "$urlfile"
}

cmd="${1:-}"
case "$cmd" in
start | stop | url) ;;
*) die "usage: scripts/postgres.sh start|stop|url" ;;
esac

mkdir -p "$dir"
exec 9>"$lockfile"
flock 9

case "$cmd" in
start) start ;;
stop) stop ;;
url) running || die "not running; run scripts/postgres.sh start"; cat "$urlfile" ;;
esac
