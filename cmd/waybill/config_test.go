package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

// env is a getenv over a map.
func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig([]string{"-secrets-file", "s.txt"}, env(nil), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:9092"}, c.Kafka.Brokers)
	assert.Equal(t, "waybill", c.Kafka.ConsumerGroup)
	assert.Equal(t, event.OrderShippedTopic, c.InputTopic)
	assert.Equal(t, event.WaybillTracedTopic, c.TracedTopic)
	assert.Equal(t, deadletter.DefaultTopic, c.DeadLetterTopic)
	assert.Equal(t, wechat.DefaultBaseURL, c.WeChatURL)
	assert.Equal(t, "s.txt", c.SecretsFile)
	assert.Empty(t, c.Redis)
	assert.Equal(t, "waybill:", c.RedisPrefix)
	require.NotNil(t, c.Parking, "parking is on unless turned off: a mixed topic must not need a flag")
	assert.Equal(t, []string{"order.shipped.delay.1m0s", "order.shipped.delay.10m0s", "order.shipped.delay.1h0m0s", "order.shipped.delay.window"}, c.Parking.Topics(c.InputTopic))
	assert.Equal(t, ratelimit.Limits{AppDaily: 100_000, UserDaily: 100, Rate: 20}, c.Limits)
	assert.Empty(t, c.AppLimits)
	assert.Equal(t, 15*time.Second, c.ClaimTTL)
	assert.Equal(t, slog.LevelInfo, c.LogLevel)
	assert.Equal(t, time.Minute, c.StatsInterval)
	assert.Equal(t, 30*time.Second, c.ShutdownTimeout)
}

func TestParseConfigParkingOff(t *testing.T) {
	c, err := parseConfig([]string{"-secrets-file", "s.txt", "-parking=false"}, env(nil), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Nil(t, c.Parking)
	c, err = parseConfig([]string{"-secrets-file", "s.txt"}, env(map[string]string{"WAYBILL_PARKING": "false"}), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Nil(t, c.Parking)
}

func TestParseConfigEnvironmentAndFlags(t *testing.T) {
	vars := map[string]string{
		"WAYBILL_BROKERS":          " k1:9092, k2:9092 ,",
		"WAYBILL_GROUP":            "from-env",
		"WAYBILL_INPUT_TOPIC":      "shop.shipped",
		"WAYBILL_SECRETS_FILE":     "/etc/waybill/secrets",
		"WAYBILL_REDIS":            "redis://:pw@127.0.0.1:6380/2",
		"WAYBILL_PARKING":          "true",
		"WAYBILL_PARKING_TIERS":    "30s,5m",
		"WAYBILL_RATE":             "-1",
		"WAYBILL_APP_LIMITS":       "wxA:app_daily=5000:rate=2.5,wxB:user_daily=-1:burst=3",
		"WAYBILL_LOG_LEVEL":        "debug",
		"WAYBILL_SHUTDOWN_TIMEOUT": "2m",
	}
	// A flag on the command line beats its variable.
	c, err := parseConfig([]string{"-group", "from-flag", "-parking-prefix", "d."}, env(vars), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"k1:9092", "k2:9092"}, c.Kafka.Brokers)
	assert.Equal(t, "from-flag", c.Kafka.ConsumerGroup)
	assert.Equal(t, "shop.shipped", c.InputTopic)
	assert.Equal(t, "/etc/waybill/secrets", c.SecretsFile)
	assert.Equal(t, "redis://:pw@127.0.0.1:6380/2", c.Redis)
	require.NotNil(t, c.Parking)
	assert.Equal(t, []time.Duration{30 * time.Second, 5 * time.Minute}, c.Parking.Tiers)
	assert.Equal(t, []string{"d.30s", "d.5m0s", "d.window"}, c.Parking.Topics(c.InputTopic))
	assert.Equal(t, -1.0, c.Limits.Rate)
	assert.Equal(t, map[string]ratelimit.Limits{
		"wxA": {AppDaily: 5000, Rate: 2.5},
		"wxB": {UserDaily: -1, Burst: 3},
	}, c.AppLimits)
	assert.Equal(t, slog.LevelDebug, c.LogLevel)
	assert.Equal(t, 2*time.Minute, c.ShutdownTimeout)
}

func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // in the message printed
	}{
		{"no secrets file", nil, nil, "WAYBILL_SECRETS_FILE"},
		{"bad variable", []string{"-secrets-file", "s"}, map[string]string{"WAYBILL_CLAIM_TTL": "soon"}, "WAYBILL_CLAIM_TTL"},
		{"bad flag", []string{"-secrets-file", "s", "-rate", "fast"}, nil, "-rate"},
		{"empty brokers", []string{"-secrets-file", "s", "-brokers", " , "}, nil, "-brokers is empty"},
		{"descending tiers", []string{"-secrets-file", "s", "-parking", "-parking-tiers", "5m,1m"}, nil, "ascend"},
		{"non-positive timeout", []string{"-secrets-file", "s", "-shutdown-timeout", "0s"}, nil, "-shutdown-timeout"},
		{"unknown limit key", []string{"-secrets-file", "s", "-app-limits", "wx1:quota=5"}, nil, `unknown key "quota"`},
		{"limit without appid", []string{"-secrets-file", "s", "-app-limits", ":rate=5"}, nil, "want appid:key=value"},
		{"invalid limit", []string{"-secrets-file", "s", "-app-limits", "wx1:rate=1e-12"}, nil, `Apps["wx1"]`},
		{"bad log level", []string{"-secrets-file", "s", "-log-level", "loud"}, nil, "-log-level"},
		{"arguments", []string{"-secrets-file", "s", "extra"}, nil, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parseConfig(tc.args, env(tc.env), &out)
			require.ErrorIs(t, err, errUsage)
			assert.Contains(t, out.String(), tc.want)
		})
	}
}

func TestParseConfigNeverEchoesRedisPassword(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"-secrets-file", "s", "-redis", "redis://:hunter2@[::1"}, env(nil), &out)
	require.ErrorIs(t, err, errUsage)
	assert.Contains(t, out.String(), "-redis")
	assert.NotContains(t, out.String(), "hunter2")
}

func TestParseSecrets(t *testing.T) {
	s, err := parseSecrets(strings.NewReader("# merchants\n\nwx5f3a9c1d2e4b6a80 = tea=shop\r\n  wx7c2e4a6b8d0f1e32=sport\n"), "f")
	require.NoError(t, err)
	// The secret is everything after the first '=', spaces trimmed.
	assert.Equal(t, wechat.StaticSecrets{"wx5f3a9c1d2e4b6a80": "tea=shop", "wx7c2e4a6b8d0f1e32": "sport"}, s)
}

func TestParseSecretsRejectsWithoutShowingSecrets(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"no equals", "wx1=a\nverysecretvalue\n", "line 2: want appid=secret"},
		{"empty secret", "wx1=\n", "line 1: want appid=secret"},
		{"empty appid", "=verysecretvalue\n", "line 1: want appid=secret"},
		{"twice", "wx1=verysecretvalue\nwx1=other\n", "line 2: appid wx1 given twice"},
		{"empty", "# nothing\n\n", "no appid=secret line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSecrets(strings.NewReader(tc.text), "f")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "verysecretvalue")
		})
	}
}

// TestRunExitStatus covers what run does before it reaches any service: bad
// flags exit 2, a secrets file it cannot use exits 1 without showing its
// content.
func TestRunExitStatus(t *testing.T) {
	var out bytes.Buffer
	assert.Equal(t, 2, run(context.Background(), []string{"-nonsense"}, env(nil), &out))

	bad := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(bad, []byte("wx1 verysecretvalue\n"), 0o600))
	out.Reset()
	assert.Equal(t, 1, run(context.Background(), []string{"-secrets-file", bad}, env(nil), &out))
	assert.Contains(t, out.String(), "line 1: want appid=secret")
	assert.NotContains(t, out.String(), "verysecretvalue")

	out.Reset()
	assert.Equal(t, 1, run(context.Background(), []string{"-secrets-file", filepath.Join(t.TempDir(), "missing")}, env(nil), &out))
	assert.Contains(t, out.String(), "no such file")
}

// TestEveryFlagDocumented keeps the package comment's table in step with the
// flags: each one is listed with its environment variable.
func TestEveryFlagDocumented(t *testing.T) {
	var usage bytes.Buffer
	_, err := parseConfig([]string{"-h"}, env(nil), &usage)
	require.ErrorIs(t, err, errHelp)
	assert.Equal(t, 0, run(context.Background(), []string{"-h"}, env(nil), &bytes.Buffer{}), "-h is no error")
	flags := regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(usage.String(), -1)
	require.NotEmpty(t, flags)
	src, err := os.ReadFile("main.go")
	require.NoError(t, err)
	for _, f := range flags {
		line := regexp.MustCompile(`(?m)^//\t-` + regexp.QuoteMeta(f[1]) + ` +` + envName(f[1]) + ` `)
		assert.Regexp(t, line, string(src), "flag -%s with %s in the package comment", f[1], envName(f[1]))
	}
	assert.Len(t, regexp.MustCompile(`(?m)^//\t-[a-z-]+ +WAYBILL_`).FindAllString(string(src), -1), len(flags),
		"the package comment lists a flag that does not exist")
}

// TestDeployFilesNameRealFlags: every WAYBILL_* variable the systemd unit
// and its example environment file set is a flag's variable, so a typo in
// a deployment file is caught here rather than silently ignored.
func TestDeployFilesNameRealFlags(t *testing.T) {
	var usage bytes.Buffer
	_, err := parseConfig([]string{"-h"}, env(nil), &usage)
	require.ErrorIs(t, err, errHelp)
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(usage.String(), -1) {
		known[envName(m[1])] = true
	}
	seen := 0
	for _, f := range []string{"../../deploy/waybill.service", "../../deploy/waybill.env.example"} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range regexp.MustCompile(`(?m)^#?(?:Environment=)?(WAYBILL_[A-Z_]+)=`).FindAllStringSubmatch(string(b), -1) {
			seen++
			assert.True(t, known[m[1]], "%s sets %s, which no flag reads", f, m[1])
		}
	}
	assert.Greater(t, seen, 5, "the deployment files set the service's variables")
}

// TestLogFormat: -log-format json writes one JSON object a line; anything
// but text or json is a usage error.
func TestLogFormat(t *testing.T) {
	var logs bytes.Buffer
	// No secrets file on disk: the service logs why it cannot start, as JSON.
	code := run(context.Background(), []string{"-secrets-file", filepath.Join(t.TempDir(), "none"), "-log-format", "json"}, env(nil), &logs)
	assert.Equal(t, 1, code)
	var line map[string]any
	require.NoError(t, json.Unmarshal(bytes.SplitN(logs.Bytes(), []byte("\n"), 2)[0], &line), logs.String())
	assert.Equal(t, "waybill cannot start", line["msg"])

	var out bytes.Buffer
	_, err := parseConfig([]string{"-secrets-file", "s", "-log-format", "xml"}, env(nil), &out)
	require.ErrorIs(t, err, errUsage)
	assert.Contains(t, out.String(), `-log-format "xml" is not text or json`)
}
