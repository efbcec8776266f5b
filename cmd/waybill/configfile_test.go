package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/ratelimit"
)

// exampleConfig writes deploy/waybill.example.yaml, the README's example,
// to a temporary directory with its secret files there too.
func exampleConfig(t *testing.T) (path string, dir string) {
	t.Helper()
	b, err := os.ReadFile("../../deploy/waybill.example.yaml")
	require.NoError(t, err)
	dir = t.TempDir()
	text := strings.ReplaceAll(string(b), "/run/secrets/", dir+"/")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kafka-password"), []byte("kafka-pw\n"), 0o600))
	for name, v := range map[string]string{"wx5f3a9c1d2e4b6a80": "secret-tea", "component-secret": "secret-platform",
		"provider-token": "secret-bearer", "wx9e8d7c6b5a4f3e2d.refresh": "secret-refresh"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600))
	}
	path = filepath.Join(dir, "waybill.yaml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path, dir
}

// TestConfigFileExample loads the README's example: flags from the file,
// merchants with their secrets by reference and their own limits.
func TestConfigFileExample(t *testing.T) {
	path, _ := exampleConfig(t)
	var stderr bytes.Buffer
	c, err := parseConfig([]string{"-config", path}, env(map[string]string{"WECHAT_SECRET_SPORTSHOP": "secret-sport"}), &stderr)
	require.NoError(t, err, stderr.String())
	assert.Equal(t, []string{"b-1.kafka.example.com:9096", "b-2.kafka.example.com:9096"}, c.Kafka.Brokers, "a list joins")
	assert.Equal(t, kafka.SASL{Mechanism: kafka.MechanismSCRAMSHA512, User: "waybill", Password: "kafka-pw"}, c.Kafka.SASL)
	assert.True(t, c.Kafka.TLS.Enable)
	assert.Equal(t, []time.Duration{time.Minute, 10 * time.Minute, time.Hour}, c.Parking.Tiers)
	assert.Equal(t, "json", c.LogFormat)
	assert.Equal(t, ratelimit.Limits{AppDaily: 50_000, Rate: 5}, c.AppLimits["wx5f3a9c1d2e4b6a80"])
	secrets, err := c.secrets()
	require.NoError(t, err)
	assert.Equal(t, "secret-tea", secrets["wx5f3a9c1d2e4b6a80"])
	assert.Equal(t, "secret-sport", secrets["wx1a2b3c4d5e6f7a8b"])
	_, kinds, err := c.merchantTable()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"wx5f3a9c1d2e4b6a80": tokenStable, "wx1a2b3c4d5e6f7a8b": tokenPlain,
		"wx9e8d7c6b5a4f3e2d": tokenAuthorizer}, kinds)
	assert.Equal(t, "secret-refresh", c.Merchants[2].RefreshToken)
	assert.Equal(t, componentConfig{AppID: "wx3c9d2a1b4e5f6a7b", SecretFile: c.Component.SecretFile, Secret: "secret-platform",
		Listen: "10.0.0.5:8390", AuthFile: c.Component.AuthFile, Auth: "secret-bearer", TicketWait: 20 * time.Minute}, c.Component)
	assert.NotContains(t, stderr.String(), "secret-")
}

// TestConfigFilePrecedence: the command line, then WAYBILL_*, then the
// file, then the default.
// TestReadmeShowsTheExampleConfig: the README's config file is the fixture
// this file's tests load, word for word.
func TestReadmeShowsTheExampleConfig(t *testing.T) {
	example, err := os.ReadFile("../../deploy/waybill.example.yaml")
	require.NoError(t, err)
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	assert.Contains(t, string(readme), "```yaml\n"+string(example)+"```\n")
}

func TestConfigFilePrecedence(t *testing.T) {
	path, _ := exampleConfig(t)
	vars := map[string]string{"WECHAT_SECRET_SPORTSHOP": "s", "WAYBILL_GROUP": "from-env", "WAYBILL_RATE": "7"}
	c, err := parseConfig([]string{"-config", path, "-rate", "9", "-app-limits", "wx5f3a9c1d2e4b6a80:rate=1"}, env(vars), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, 9.0, c.Limits.Rate, "the command line wins")
	assert.Equal(t, "from-env", c.Kafka.ConsumerGroup, "the environment beats the file")
	assert.Equal(t, int64(100), c.Limits.UserDaily, "the file beats the default")
	assert.Equal(t, ratelimit.Limits{AppDaily: 50_000, Rate: 1}, c.AppLimits["wx5f3a9c1d2e4b6a80"],
		"-app-limits beats a merchant's limits key by key")

	// WAYBILL_CONFIG names the file too.
	c, err = parseConfig(nil, env(map[string]string{"WAYBILL_CONFIG": path, "WECHAT_SECRET_SPORTSHOP": "s"}), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, "waybill", c.Kafka.ConsumerGroup)
}

// TestConfigFileErrorsNameTheLine: unknown keys, a secret inline, a
// missing secret and bad values are each refused with the line.
func TestConfigFileErrorsNameTheLine(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown key":       {"brokers: k:9092\nbrokres: k:9093\n", "line 2: unknown key \"brokres\""},
		"unknown merchant":  {"merchants:\n  - appid: wx1\n    secret: inline\n", "line 3: unknown merchant key \"secret\""},
		"no secret":         {"merchants:\n  - appid: wx1\n", "line 2: merchant wx1: give exactly one of secret_file and secret_env"},
		"empty secret env":  {"merchants:\n  - appid: wx1\n    secret_env: NOT_SET\n", "line 2: merchant wx1: the variable NOT_SET is empty"},
		"bad value":         {"rate: fast\n", "line 1: rate:"},
		"bad limit":         {"merchants:\n  - appid: wx1\n    secret_env: S\n    limits: {speed: 3}\n", "line 4: limits: unknown key \"speed\""},
		"twice":             {"rate: 1\nrate: 2\n", "line 2: key \"rate\" given twice"},
		"not yaml":          {"rate: [1\n", "config "},
		"nested config key": {"config: other.yaml\n", "line 1: a config file cannot name another"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			require.NoError(t, os.WriteFile(path, []byte(tc.yaml), 0o600))
			var stderr bytes.Buffer
			_, err := parseConfig([]string{"-config", path, "-secrets-file", "s"}, env(map[string]string{"S": "x"}), &stderr)
			require.ErrorIs(t, err, errUsage)
			assert.Contains(t, stderr.String(), tc.want)
		})
	}
}
