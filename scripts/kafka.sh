#!/usr/bin/env bash
# Private Apache Kafka 4.x broker for tests and local runs.
#
#   scripts/kafka.sh fetch   download the broker jars from Maven Central (cached)
#   scripts/kafka.sh start   start (or reuse) the broker; print its PLAINTEXT address
#   scripts/kafka.sh sasl    start (or reuse) the broker; print one line
#                            "<sasl_ssl_addr> <abs ca.pem> <abs other-ca.pem>"
#   scripts/kafka.sh addr    print the running broker's PLAINTEXT address; fail if none
#   scripts/kafka.sh stop    stop it and wait until it has exited
#
# The broker is org.apache.kafka:kafka_2.13 and its runtime dependencies, copied
# by `mvn dependency:copy-dependencies` (scripts/kafka/pom.xml) into
# .cache/kafka/<version>/libs and run straight from that class path: no tarball,
# no install. It is a single KRaft node (broker and controller in one process)
# on free ports of 127.0.0.1, with a fresh log dir in .cache/kafka/run/ each time
# it starts. "start" and "sasl" return only once the broker logs that it has
# started and both client ports accept connections.
#
# Listeners (all on 127.0.0.1):
#   PLAINTEXT  clients, and inter-broker traffic; the address "start" prints
#   SASL_SSL   clients only, like managed Kafka (MSK, Confluent, CKafka, Alibaba
#              Cloud): TLS, then SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, all
#              for user "waybill" with password "waybill-secret" (the SCRAM
#              credentials are written into the metadata log at format time).
#              No authorizer: an authenticated client may do anything.
#   CONTROLLER PLAINTEXT, KRaft only
# Each launch makes a fresh throw-away PKI in .cache/kafka/run/tls/ with openssl:
# a self-signed CA (ca.pem), a broker certificate it signed for IP:127.0.0.1 and
# DNS:localhost (served from the PKCS12 keystore broker.p12), and a second,
# unrelated CA (other-ca.pem) that signed nothing, for "untrusted CA" tests.
# Clients verify the broker with ca.pem; no client certificates are asked for.
# "sasl" prints the SASL_SSL address and the absolute paths of both CA files.
#
# A running broker is reused only when it has everything above; one started by
# an older version of this script (no SASL_SSL listener) is stopped and
# relaunched by the next "start" or "sasl", which then prints the new address.
#
# Environment:
#   KAFKA_VERSION          broker version to fetch and run (default below)
#   KAFKA_JAVA_OPTS        JVM options for the broker (default: a small heap)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to serve (default 120)
#   KAFKA_RUN_DIR          the broker's state (pid, addresses, data, PKI); a
#                          directory of its own makes a second, private broker
#                          that only its caller uses (default .cache/kafka/run)
#
# When java (17 or later), mvn or openssl is missing it is installed from
# Debian's packages (root, or sudo, needed), so a fresh CI machine needs nothing
# else.
# Concurrent callers (parallel test binaries) are serialized with flock, and all
# share one broker.
set -euo pipefail

# 4.4.0 is the newest Kafka on Maven Central that this script was tried with;
# 4.1.1 and 4.3.1 work the same way.
version="${KAFKA_VERSION:-4.4.0}"
# A test broker carries little load and starts often, usually on a small CI
# machine: the client compiler alone and the serial collector start it sooner
# and leave more CPU to the tests.
java_opts="${KAFKA_JAVA_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}"
start_timeout="${KAFKA_START_TIMEOUT:-120}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
conf="$root/scripts/kafka"
cache="$root/.cache/kafka"
libs="$cache/$version/libs"
run="${KAFKA_RUN_DIR:-$cache/run}"
pidfile="$run/kafka.pid"
addrfile="$run/addr"
sasladdrfile="$run/sasladdr"
tls="$run/tls"
versionfile="$run/version"
logfile="$run/server.log"
outfile="$run/stdout.log"
lockfile="$cache/lock"

die() { echo "scripts/kafka.sh: $*" >&2; exit 1; }
note() { echo "scripts/kafka.sh: $*" >&2; }

java_bin() {
	if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
		echo "$JAVA_HOME/bin/java"
	else
		command -v java || true
	fi
}

# java_major: the feature version of the java found by java_bin, or 0.
java_major() {
	local j v
	j="$(java_bin)"
	[[ -n "$j" ]] || { echo 0; return; }
	v="$("$j" -version 2>&1 | sed -n 's/.* version "\([0-9]*\)[."].*/\1/p' | head -n 1)"
	echo "${v:-0}"
}

# install_tools: make sure java >= 17, mvn and openssl exist, installing
# Debian's packages when they do not.
install_tools() {
	local want=()
	[[ "$(java_major)" -ge 17 ]] || want+=(default-jre-headless)
	command -v mvn >/dev/null 2>&1 || want+=(maven)
	command -v openssl >/dev/null 2>&1 || want+=(openssl)
	[[ ${#want[@]} -eq 0 ]] && return 0
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 ||
			die "missing ${want[*]} and not root: apt-get install ${want[*]} (Kafka 4 needs Java 17 or later)"
		sudo="sudo"
	fi
	command -v apt-get >/dev/null 2>&1 ||
		die "missing ${want[*]} and no apt-get here: install Java 17+, Maven and openssl"
	note "installing ${want[*]} from Debian's packages"
	$sudo apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >&2 ||
		die "apt-get install ${want[*]} failed"
	[[ "$(java_major)" -ge 17 ]] || die "java 17 or later still missing after install (found: $(java_bin))"
	command -v mvn >/dev/null 2>&1 || die "mvn still missing after install"
	command -v openssl >/dev/null 2>&1 || die "openssl still missing after install"
}

# fetch: copy the broker's jars into $libs unless a complete copy is there.
# Maven writes into a scratch directory that is renamed into place only when it
# has finished, so an interrupted fetch never leaves a half class path behind.
fetch() {
	[[ -f "$libs/.complete" ]] && return 0
	install_tools
	local tmp="$cache/$version/libs.tmp"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	note "fetching org.apache.kafka:kafka_2.13:$version from Maven Central"
	# Maven's output goes to a file and is shown only when it fails: a quiet
	# run still prints terminal escapes.
	local mvnlog="$cache/$version/mvn.log"
	if ! mvn -B -Dstyle.color=never -f "$conf/pom.xml" dependency:copy-dependencies \
		-Dkafka.version="$version" -DincludeScope=runtime \
		-DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
		grep -E 'ERROR|FAIL' "$mvnlog" | tail -n 30 >&2 || true
		die "mvn could not fetch org.apache.kafka:kafka_2.13:$version (full log: $mvnlog)"
	fi
	compgen -G "$tmp/kafka_2.13-$version.jar" >/dev/null ||
		die "mvn finished but kafka_2.13-$version.jar is not in $tmp"
	touch "$tmp/.complete"
	rm -rf "$libs"
	mv "$tmp" "$libs"
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
	timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# free_port: print a port of 127.0.0.1 nobody listens on. Ports come from below
# Linux's ephemeral range (32768+) so outgoing connections cannot hold them.
free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % 12000))
		port_in_use "$p" || { echo "$p"; return 0; }
	done
	die "no free port found on 127.0.0.1"
}

# cluster_id: print a new KRaft cluster id, as `kafka-storage random-uuid`
# would (16 random bytes, unpadded URL-safe base64, not starting with '-'),
# without paying for another JVM start.
cluster_id() {
	local id
	while :; do
		id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c 1-22)"
		[[ "$id" == -* ]] || { echo "$id"; return 0; }
	done
}

# make_tls: write a fresh throw-away PKI into $tls (see the top of this file):
# ca.pem, broker.pem/broker.key signed by it, the broker's PKCS12 keystore
# broker.p12 with its password in keystore.password, and an unrelated
# other-ca.pem. Everything is made in a scratch directory renamed into place at
# the end, so a half-made PKI is never used. Keys are ECDSA P-256, which Java,
# Go and librdkafka all accept and openssl makes at once.
make_tls() {
	command -v openssl >/dev/null 2>&1 || install_tools
	local tmp="$tls.tmp" log="$run/openssl.log"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	chmod 700 "$tmp"
	: >"$log"
	ossl() { openssl "$@" >>"$log" 2>&1 || die "openssl $1 failed making the test TLS files (see $log)"; }
	cat >"$tmp/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = waybill test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[broker]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
	local c
	for c in ca other-ca broker; do
		ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/$c.key"
	done
	ossl req -x509 -new -config "$tmp/openssl.cnf" -extensions ca -sha256 -days 3650 \
		-key "$tmp/ca.key" -subj "/O=waybill tests/CN=waybill test CA" \
		-set_serial "0x$(openssl rand -hex 15)" -out "$tmp/ca.pem"
	ossl req -x509 -new -config "$tmp/openssl.cnf" -extensions ca -sha256 -days 3650 \
		-key "$tmp/other-ca.key" -subj "/O=waybill tests/CN=unrelated waybill test CA" \
		-set_serial "0x$(openssl rand -hex 15)" -out "$tmp/other-ca.pem"
	ossl req -new -config "$tmp/openssl.cnf" -key "$tmp/broker.key" \
		-subj "/O=waybill tests/CN=localhost" -out "$tmp/broker.csr"
	ossl x509 -req -in "$tmp/broker.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
		-set_serial "0x$(openssl rand -hex 15)" -sha256 -days 3650 \
		-extfile "$tmp/openssl.cnf" -extensions broker -out "$tmp/broker.pem"
	ossl verify -CAfile "$tmp/ca.pem" -purpose sslserver "$tmp/broker.pem"
	openssl rand -hex 16 >"$tmp/keystore.password"
	ossl pkcs12 -export -in "$tmp/broker.pem" -inkey "$tmp/broker.key" -certfile "$tmp/ca.pem" \
		-name broker -passout "file:$tmp/keystore.password" -out "$tmp/broker.p12"
	rm -f "$tmp/broker.csr" "$tmp/ca.key" "$tmp/other-ca.key"
	chmod 755 "$tmp"
	chmod 644 "$tmp/ca.pem" "$tmp/other-ca.pem"
	rm -rf "$tls"
	mv "$tmp" "$tls"
}

# alive PID: true when PID is a live broker process (not a recycled pid).
alive() {
	kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# running: true when our pidfile names a live broker that serves both client
# listeners and whose CA files are in place. A broker started by an older
# version of this script has no SASL_SSL listener and so is not "running" by
# this test; start then replaces it.
running() {
	[[ -s "$pidfile" && -s "$addrfile" && -s "$sasladdrfile" && -s "$tls/ca.pem" && -s "$tls/other-ca.pem" ]] || return 1
	local addr sasl
	addr="$(cat "$addrfile")"
	sasl="$(cat "$sasladdrfile")"
	alive "$(cat "$pidfile")" && port_in_use "${addr##*:}" && port_in_use "${sasl##*:}"
}

# launch: format a fresh log dir and start the broker on new ports; wait until
# it serves. Returns 1 (broker stopped again) when it did not come up, so the
# caller can retry on other ports.
launch() {
	local port sport cport pid cluster i j pass
	port="$(free_port)"
	sport="$(free_port)"
	cport="$(free_port)"
	[[ "$port" != "$cport" && "$port" != "$sport" && "$sport" != "$cport" ]] || return 1

	make_tls
	pass="$(cat "$tls/keystore.password")"
	rm -rf "$run/data"
	mkdir -p "$run/data"
	sed -e "s|@PORT@|$port|g" -e "s|@SASL_PORT@|$sport|g" -e "s|@CONTROLLER_PORT@|$cport|g" \
		-e "s|@LOG_DIR@|$run/data|g" -e "s|@TLS_DIR@|$tls|g" -e "s|@KEYSTORE_PASSWORD@|$pass|g" \
		"$conf/server.properties.in" >"$run/server.properties"

	# The SCRAM credentials go into the metadata log with the rest of the
	# initial state: a KRaft broker has no ZooKeeper to add them to later, and
	# kafka-configs would cost another JVM start.
	j="$(java_bin)"
	cluster="$(cluster_id)"
	"$j" -Dlog4j2.configurationFile="$conf/log4j2.xml" -Dkafka.log.file="$logfile" \
		-cp "$libs/*" kafka.tools.StorageTool format -t "$cluster" -c "$run/server.properties" \
		--add-scram 'SCRAM-SHA-256=[name=waybill,password=waybill-secret]' \
		--add-scram 'SCRAM-SHA-512=[name=waybill,password=waybill-secret]' \
		>>"$outfile" 2>&1 ||
		die "kafka.tools.StorageTool format failed (see $outfile)"

	# The broker runs in its own session with every inherited descriptor
	# closed: the caller (often `go test` reading our stdout) must not wait for
	# it, and it must not hold the lock on fd 9.
	: >"$logfile"
	# shellcheck disable=SC2086 # java_opts is a list of options.
	setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
		"$j" $java_opts \
		-Dlog4j2.configurationFile="$conf/log4j2.xml" -Dkafka.log.file="$logfile" \
		-cp "$libs/*" kafka.Kafka "$run/server.properties" \
		</dev/null >>"$outfile" 2>&1 9>&- &

	for i in $(seq 1 $((start_timeout * 10))); do
		pid="$(cat "$pidfile" 2>/dev/null || true)"
		if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
			note "broker exited while starting on 127.0.0.1:$port (SASL_SSL 127.0.0.1:$sport)"
			tail -n 20 "$logfile" "$outfile" >&2 2>/dev/null || true
			rm -f "$pidfile"
			return 1
		fi
		if grep -q 'Kafka Server started' "$logfile" 2>/dev/null && port_in_use "$port" && port_in_use "$sport"; then
			echo "127.0.0.1:$port" >"$addrfile"
			echo "127.0.0.1:$sport" >"$sasladdrfile"
			echo "$version" >"$versionfile"
			return 0
		fi
		sleep 0.1
	done
	note "broker did not serve on 127.0.0.1:$port and 127.0.0.1:$sport within ${start_timeout}s"
	tail -n 20 "$logfile" "$outfile" >&2 2>/dev/null || true
	stop
	return 1
}

# ensure: reuse the running broker or start a new one; print nothing on stdout.
ensure() {
	if running; then
		local have
		have="$(cat "$versionfile" 2>/dev/null || echo unknown)"
		[[ "$have" == "$version" ]] ||
			note "reusing the running Kafka $have although $version was asked for; run scripts/kafka.sh stop first to switch"
		return 0
	fi
	if [[ -s "$pidfile" ]] && alive "$(cat "$pidfile")"; then
		note "broker $(cat "$pidfile") lacks a listener or its TLS files (started by an older scripts/kafka.sh?); restarting it"
	fi
	stop
	fetch
	mkdir -p "$run"
	: >"$outfile"
	local attempt
	for attempt in 1 2 3; do
		launch && return 0
	done
	die "Kafka $version did not start (logs: $logfile, $outfile)"
}

start() {
	ensure
	cat "$addrfile"
}

# sasl: print "<sasl_ssl_addr> <abs ca.pem> <abs other-ca.pem>" on one line.
# The fields are separated by single spaces, so the paths must have none.
sasl() {
	ensure
	[[ "$tls" != *[[:space:]]* ]] || die "the repository path has white space, which the sasl line cannot carry: $tls"
	echo "$(cat "$sasladdrfile") $tls/ca.pem $tls/other-ca.pem"
}

stop() {
	rm -f "$addrfile" "$sasladdrfile" "$versionfile"
	[[ -s "$pidfile" ]] || { rm -rf "$tls"; return 0; }
	local pid i
	pid="$(cat "$pidfile")"
	if alive "$pid"; then
		# SIGTERM runs the broker's controlled shutdown; give it time, then insist.
		kill "$pid" 2>/dev/null || true
		for i in $(seq 1 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			note "broker $pid ignored SIGTERM for 30s; killing it"
			kill -9 "$pid" 2>/dev/null || true
			for i in $(seq 1 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
		fi
	fi
	rm -f "$pidfile"
	rm -rf "$run/data" "$tls"
}

cmd="${1:-}"
case "$cmd" in
fetch | start | sasl | stop | addr) ;;
*) die "usage: scripts/kafka.sh fetch|start|sasl|stop|addr" ;;
esac

mkdir -p "$cache"
exec 9>"$lockfile"
flock 9

case "$cmd" in
fetch) fetch ;;
start) start ;;
sasl) sasl ;;
stop) stop ;;
addr) running || die "not running; run scripts/kafka.sh start"; cat "$addrfile" ;;
esac
