package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

// TestReloadAppliesMerchantsAndLimits: a reload adds a merchant, rotates a
// secret and changes a limit in the running service, names what needs a
// restart, and an invalid configuration changes nothing.
// testService is a service with cfg's token sources and limiters, and no
// Kafka.
func testService(t *testing.T, cfg config, logs *bytes.Buffer) *service {
	t.Helper()
	secrets, kinds, err := cfg.merchantTable()
	require.NoError(t, err)
	s := &service{cfg: cfg, applied: cfg, log: slog.New(slog.NewTextHandler(logs, nil))}
	require.NoError(t, s.wireTokens(cfg, secrets, kinds, new(wechat.MemoryStore)))
	s.limiter, err = ratelimit.New(cfg.limiterConfig(nil))
	require.NoError(t, err)
	s.goodsLimiter, err = ratelimit.New(cfg.limiterConfig(nil))
	require.NoError(t, err)
	return s
}

func TestReloadAppliesMerchantsAndLimits(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	write("a.secret", "secret-a\n")
	conf := write("waybill.yaml", "merchants:\n  - appid: wxA\n    secret_file: "+dir+"/a.secret\n")
	parse := func() (config, error) {
		return parseConfig([]string{"-config", conf}, env(map[string]string{"B_SECRET": "secret-b"}), &bytes.Buffer{})
	}
	cfg, err := parse()
	require.NoError(t, err)
	var logs bytes.Buffer
	s := testService(t, cfg, &logs)
	ctx := context.Background()

	_, err = s.secrets.Secret(ctx, "wxB")
	require.ErrorIs(t, err, wechat.ErrUnknownAppID)

	write("a.secret", "secret-a2\n")
	write("waybill.yaml", "merchants:\n  - appid: wxA\n    secret_file: "+dir+"/a.secret\n    limits: {app_daily: 500}\n"+
		"  - appid: wxB\n    secret_env: B_SECRET\nwechat-url: http://127.0.0.1:1\n")
	next, err := parse()
	require.NoError(t, err)
	require.NoError(t, s.reload(next))
	got, err := s.secrets.Secret(ctx, "wxB")
	require.NoError(t, err)
	assert.Equal(t, "secret-b", got, "a new merchant")
	got, _ = s.secrets.Secret(ctx, "wxA")
	assert.Equal(t, "secret-a2", got, "a rotated secret")
	assert.Equal(t, int64(500), s.limiter.LimitsFor("wxA").AppDaily)
	assert.Equal(t, int64(500), s.goodsLimiter.LimitsFor("wxA").AppDaily)
	assert.Contains(t, logs.String(), `msg="configuration reloaded" merchants_added=[wxB] secrets_rotated=[wxA] merchants_removed=[] limits_changed=[wxA] restart_needed=[wechat-url]`)
	assert.NotContains(t, logs.String(), "secret-")

	// A merchant whose secret file is gone: nothing changes.
	require.NoError(t, os.Remove(filepath.Join(dir, "a.secret")))
	_, err = parse()
	require.Error(t, err, "the configuration no longer parses")
	broken := next
	broken.Merchants = append(broken.Merchants, merchant{AppID: "wxB", Secret: "dup"}) // an appid twice
	assert.Error(t, s.reload(broken))
	got, _ = s.secrets.Secret(ctx, "wxA")
	assert.Equal(t, "secret-a2", got, "the running configuration stays")
	bad := next
	bad.AppLimits = map[string]ratelimit.Limits{"wxA": {Rate: 5, Burst: -1}}
	assert.Error(t, s.reload(bad))
	assert.Equal(t, int64(500), s.limiter.LimitsFor("wxA").AppDaily, "invalid limits change nothing")
}
