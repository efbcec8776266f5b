// Command waybill is the waybill service: it consumes order.shipped events
// from Kafka, calls WeChat's trace_waybill for each, and publishes
// waybill.traced or a dead letter. Run it next to your Kafka:
//
//	waybill -brokers kafka1:9092,kafka2:9092 -secrets-file /etc/waybill/secrets \
//	    -redis redis://:password@redis:6379/0
//
// Its replay command, waybill replay, sends dead letters back once their
// cause is fixed; see "Replaying dead letters" below.
//
// Every flag -x-y falls back to the environment variable WAYBILL_X_Y when it
// is not given on the command line, then to its default:
//
//	-brokers            WAYBILL_BROKERS            comma-separated Kafka brokers (127.0.0.1:9092)
//	-group              WAYBILL_GROUP              consumer group (waybill); parking adds <group>-delay
//	-kafka-sasl-mechanism   WAYBILL_KAFKA_SASL_MECHANISM   PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (none)
//	-kafka-sasl-user        WAYBILL_KAFKA_SASL_USER        SASL user
//	-kafka-sasl-password-file WAYBILL_KAFKA_SASL_PASSWORD_FILE file holding the SASL password
//	-kafka-tls              WAYBILL_KAFKA_TLS              connect over TLS (on with any TLS file)
//	-kafka-tls-ca-file      WAYBILL_KAFKA_TLS_CA_FILE      PEM CAs of the brokers (the system's)
//	-kafka-tls-cert-file    WAYBILL_KAFKA_TLS_CERT_FILE    client certificate, for mutual TLS
//	-kafka-tls-key-file     WAYBILL_KAFKA_TLS_KEY_FILE     client key, for mutual TLS
//	-kafka-tls-server-name  WAYBILL_KAFKA_TLS_SERVER_NAME  name the brokers' certificates carry
//	-kafka-no-idempotence   WAYBILL_KAFKA_NO_IDEMPOTENCE   turn off the idempotent producer
//	-input-topic        WAYBILL_INPUT_TOPIC        order.shipped events (order.shipped)
//	-traced-topic       WAYBILL_TRACED_TOPIC       waybill.traced events (waybill.traced)
//	-dead-letter-topic  WAYBILL_DEAD_LETTER_TOPIC  dead letters (order.shipped.dead)
//	-wechat-url         WAYBILL_WECHAT_URL         WeChat API base URL (https://api.weixin.qq.com)
//	-config             WAYBILL_CONFIG             YAML file: the flags' names as keys, plus merchants
//	-secrets-file       WAYBILL_SECRETS_FILE       file of appid=secret lines; required unless -config lists merchants
//	-token-api          WAYBILL_TOKEN_API          stable_token, or token (cgi-bin/token shared through -redis) (stable_token)
//	-component-appid    WAYBILL_COMPONENT_APPID    appid of the third-party platform, for merchants with token: authorizer
//	-component-secret-file WAYBILL_COMPONENT_SECRET_FILE file holding the platform's appsecret
//	-verify-ticket-file WAYBILL_VERIFY_TICKET_FILE file the platform's callback writes each component_verify_ticket to
//	-verify-ticket-redis-key WAYBILL_VERIFY_TICKET_REDIS_KEY Redis key the platform's callback SETs to each ticket
//	-provider-listen    WAYBILL_PROVIDER_LISTEN    address of the provider endpoint (tickets and refresh tokens over HTTP)
//	-provider-auth-file WAYBILL_PROVIDER_AUTH_FILE file holding the bearer token the endpoint's callers send
//	-verify-ticket-wait WAYBILL_VERIFY_TICKET_WAIT how long to wait at start for a ticket before failing (20m)
//	-redis              WAYBILL_REDIS              host:port or redis:// / rediss:// URL; empty: in memory
//	-redis-prefix       WAYBILL_REDIS_PREFIX       prefix of every Redis key waybill writes (waybill:)
//	-parking            WAYBILL_PARKING            park waiting events on delay topics (true)
//	-parking-tiers      WAYBILL_PARKING_TIERS      delays of the delay topics (1m,10m,1h)
//	-parking-prefix     WAYBILL_PARKING_PREFIX     delay topic prefix (<input-topic>.delay.)
//	-create-topics      WAYBILL_CREATE_TOPICS      create missing topics at start instead of refusing to start (false)
//	-topic-partitions   WAYBILL_TOPIC_PARTITIONS   partitions of each topic created (6)
//	-topic-replication  WAYBILL_TOPIC_REPLICATION  replicas of each topic created (3)
//	-app-daily          WAYBILL_APP_DAILY          calls per appid a day (100000; negative: no limit)
//	-user-daily         WAYBILL_USER_DAILY         calls per buyer and appid a day (100; negative: no limit)
//	-rate               WAYBILL_RATE               calls per second per appid (20; negative: no limit)
//	-burst              WAYBILL_BURST              calls at once after an idle spell (0: one second's worth)
//	-app-limits         WAYBILL_APP_LIMITS         per-appid overrides, e.g. wx1:app_daily=5000:rate=2,wx2:rate=1
//	-claim-ttl          WAYBILL_CLAIM_TTL          how long a crashed process's claim on a waybill blocks others (15s)
//	-admin-listen       WAYBILL_ADMIN_LISTEN       address of /metrics, /healthz and /readyz, e.g. :9464 (none)
//	-pprof              WAYBILL_PPROF              serve /debug/pprof/ on -admin-listen (false)
//	-metrics-max-appids WAYBILL_METRICS_MAX_APPIDS appids with series of their own, then "other" (1000; negative: one)
//	-log-level          WAYBILL_LOG_LEVEL          debug, info, warn or error (info)
//	-log-format         WAYBILL_LOG_FORMAT         text or json (text)
//	-stats-interval     WAYBILL_STATS_INTERVAL     how often the counters are logged at debug level (1m)
//	-shutdown-timeout   WAYBILL_SHUTDOWN_TIMEOUT   how long in-flight events may finish after a signal (30s)
//	-concurrency        WAYBILL_CONCURRENCY        events of one input partition in flight at once, one per order id (16)
//
// The secrets file holds one appid=secret line per mini program; blank lines
// and lines starting with # are skipped. Secrets, access tokens and Redis
// passwords are never logged. Access tokens come from cgi-bin/stable_token,
// or with -token-api token from cgi-bin/token, which voids the previous
// token on every call: use it with -redis, for a merchant whose other
// systems share that token through the same store.
//
// # Third-party platforms
//
// A service provider (第三方平台) names its platform with -component-appid
// and -component-secret-file, and lists its merchants in the config file
// with token: authorizer; other merchants keep their app secrets, in the
// same file. The service obtains the component_access_token with the
// component_verify_ticket and each merchant's authorizer_access_token with
// its authorizer_refresh_token, and saves every rotated refresh token to
// the token store (-redis: shared by every process, and kept across
// restarts). WeChat pushes the ticket to the platform's callback every 10
// minutes; the callback decrypts it and hands it over in one of three ways:
//
//   - it writes it to -verify-ticket-file, atomically (read every 30 s; the
//     file's modification time is the push time);
//   - it runs SET <-verify-ticket-redis-key> <ticket> EX 43200 (read every
//     30 s; the TTL tells the ticket's age; a key without one is refused);
//   - it calls the provider endpoint, -provider-listen:
//     PUT /component_verify_ticket with the ticket as the body and
//     "Authorization: Bearer <the token in -provider-auth-file>".
//
// A ticket older than 12 hours, or than the one stored, is not used. The
// endpoint also takes the refresh token of a merchant configured with
// token: authorizer after it authorizes (again):
// PUT /authorizers/{appid}/refresh_token. A merchant's refresh_token_file or
// refresh_token_env in the config file is stored only while the store holds
// none for it: once rotated, the stored one is newer. Authorizers (and
// token: token merchants) need -redis, so that rotated refresh tokens
// outlive a restart and every process sees the same tokens; a process
// without any ticket source uses the tickets another stores. At start, with
// authorizer merchants, the service consumes nothing until a ticket is
// stored, for at most -verify-ticket-wait, then fails saying so; a reload
// adding the first authorizers without a stored ticket is refused.
//
// -config names a YAML file whose keys are the flags' names, plus a merchants
// list: appid; token (stable_token, token or authorizer; default
// -token-api); secret_file or secret_env (the app secret by reference, never
// in the file), or for an authorizer refresh_token_file or
// refresh_token_env; and limits (app_daily, user_daily, rate, burst), each
// key of which a -app-limits entry for the same appid overrides. The command line
// and the environment override it; unknown keys are errors with their line.
// SIGHUP rereads it: new merchants, rotated secrets and changed limits apply
// from the next call, without dropping events in flight; settings that need a
// restart are named in the log; a file that does not load is rejected and the
// running configuration stays.
//
// # Operating it
//
// With -admin-listen the service serves, on that one address:
//
//   - /metrics: Prometheus metrics (package metrics documents each and its
//     labels), Watermill's router metrics (waybill_router_*), the consumer
//     lag of the input and delay topics, Go and process metrics;
//   - /healthz: 200 while the process runs;
//   - /readyz: 200 when the router consumes, a Kafka broker answers, Redis
//     answers (with -redis) and a WeChat token is obtainable; 503 with the
//     failing checks otherwise (JSON). Each check is bounded by 5 s.
//   - /debug/pprof/ with -pprof.
//
// deploy/prometheus holds alerting rules for these metrics and
// deploy/grafana a dashboard; docs/RUNBOOK.md says what each alert means and
// what to do.
//
// Traces (OpenTelemetry) are off unless the standard environment asks for
// them: OTEL_TRACES_EXPORTER (otlp, console) or OTEL_EXPORTER_OTLP_ENDPOINT,
// with OTEL_SERVICE_NAME (default waybill), OTEL_RESOURCE_ATTRIBUTES and
// OTEL_TRACES_SAMPLER as usual. Each event's handling is a span continuing
// the W3C traceparent of its input, with its WeChat calls as children, and
// every message published carries the trace on.
//
// SIGINT or SIGTERM stops it gracefully: no new events are taken, events in
// flight may finish their WeChat call and publish for -shutdown-timeout, then
// the rest are left for redelivery; the counters are logged and it exits 0.
// A second signal ends it at once. It exits 1 when it cannot start or stops
// on an error, 2 for bad flags or environment.
//
// # Replaying dead letters
//
// waybill replay sends dead-lettered order.shipped events back to be traced
// again, once their cause is fixed: a permission granted, a phone number
// corrected, a producer repaired. It is replay.Run with flags, and needs
// neither the secrets file nor Redis:
//
//	waybill replay -brokers 127.0.0.1:9092 -topic order.shipped.dead \
//	    -reason configuration -errcode 48001 -appid wx5f3a9c1d2e4b6a80 \
//	    -since 2026-11-01T00:00:00Z -dry-run
//
// It reads the dead-letter topic up to the end offsets it finds when it
// starts, then stops, and republishes each selected event to the topic it was
// consumed from (or -to), as it was, with its waybill_replays header one
// higher. Events replayed -max-replays times already are skipped and listed.
// Of its flags only the Kafka ones (-brokers, -kafka-*) read the service's
// WAYBILL_* variables, so that a replay run beside the service reaches the
// same cluster but never joins the service's consumer group:
//
//	-brokers      comma-separated Kafka brokers (default 127.0.0.1:9092)
//	-kafka-sasl-mechanism  SASL mechanism, as for the service
//	-kafka-sasl-user  SASL user
//	-kafka-sasl-password-file  file holding the SASL password
//	-kafka-tls    connect over TLS
//	-kafka-tls-ca-file  PEM CAs of the brokers
//	-kafka-tls-cert-file  client certificate, for mutual TLS
//	-kafka-tls-key-file  client key, for mutual TLS
//	-kafka-tls-server-name  name the brokers' certificates carry
//	-kafka-no-idempotence  turn off the idempotent producer
//	-topic        dead-letter topic to read (default order.shipped.dead)
//	-to           send every selected event to this topic instead of its source topic
//	-reason       comma-separated reasons: invalid_event, permanent, configuration,
//	              not_yet_exhausted, too_many_attempts
//	-errcode      comma-separated WeChat errcodes, e.g. 48001,61007
//	-appid        comma-separated appids
//	-order-id     comma-separated order ids
//	-since        RFC 3339 time: last failure at or after it
//	-until        RFC 3339 time: last failure before it
//	-dry-run      print what would move; publish and commit nothing
//	-json         one JSON object a line on stdout: each record read
//	              ({"type":"record",…}), then the report ({"type":"report",…})
//	-rate         events per second at most (0: no cap)
//	-max-replays  skip events replayed this often already (default 3)
//	-batch        records between two commits of the position (default 100)
//	-group        consumer group that records progress (default: named after
//	              -topic, -to and the filters, so the same command resumes)
//
// Selected conditions must all hold; a comma-separated list holds when any of
// its elements does. Without filters every dead letter is replayed.
//
// Output: a dry run prints one line per event that would move; a real run
// prints the events skipped for the replay limit or as invalid. Both end
// with a summary per reason. Progress goes to stderr: a bar when stderr is a
// terminal, a plain line every tenth of the way otherwise.
//
// Interrupting it (Ctrl-C) commits what was republished, so running the same
// command again resumes where it stopped. If it dies instead, the rerun
// republishes again at most -batch events per partition.
//
// Exit status: 0 when the replay completed (or for -h), 1 when it failed or
// was interrupted, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == topicsCommand {
		// Short admin calls: SIGINT and SIGTERM end it at once.
		os.Exit(topicsMain(os.Args[2:], os.Getenv, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(os.Args) > 1 && os.Args[1] == replayCommand {
		// Every signal only interrupts a replay, which then commits what it
		// republished and exits 1.
		os.Exit(replayMain(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr, isTerminal(os.Stderr)))
	}
	go func() {
		<-ctx.Done()
		stop() // restore the default: a second signal ends the process at once
	}()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stderr))
}

// run parses the configuration, builds the service and runs it until ctx
// ends. It returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(h)
	shutdownTracing, err := startTracing(ctx, getenv, log)
	if err != nil {
		log.Error("waybill cannot start", "err", err)
		return 2 // bad environment: a restart cannot fix it
	}
	if shutdownTracing != nil {
		defer func() {
			// Spans still buffered are exported, within a bound.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := shutdownTracing(sctx); err != nil {
				log.Warn("flushing traces", "err", err)
			}
		}()
	}
	// Caught from here on: a SIGHUP while the service starts must not end
	// it (the default action); it is applied once it runs.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	svc, err := build(ctx, cfg, log)
	if err != nil {
		log.Error("waybill cannot start", "err", err)
		return 1
	}
	go reloadOnHUP(ctx, hup, svc, args, getenv, log)
	if err := svc.run(ctx); err != nil {
		log.Error("waybill stopped on an error", "err", err)
		return 1
	}
	return 0
}
