package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// providerFiles writes the platform's secret, the endpoint's bearer token
// and a config file with one merchant of each kind, and returns the
// config's path.
func providerFiles(t *testing.T, extra string) (conf, dir string) {
	t.Helper()
	dir = t.TempDir()
	for name, v := range map[string]string{"component": "comp-secret\n", "auth": "bearer-1\n", "shop": "shop-secret\n",
		"refresh-a": "refresh-a0\n"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600))
	}
	conf = filepath.Join(dir, "waybill.yaml")
	text := "component-appid: wxcomp\ncomponent-secret-file: " + dir + "/component\n" +
		"provider-listen: 127.0.0.1:0\nprovider-auth-file: " + dir + "/auth\n" + extra +
		"redis: 127.0.0.1:1\n" + // required with these merchants; parsed only, the tests use a MemoryStore

		"merchants:\n" +
		"  - appid: wxshop\n    secret_file: " + dir + "/shop\n" +
		"  - appid: wxplain\n    token: token\n    secret_env: PLAIN_SECRET\n" +
		"  - appid: wxauthA\n    token: authorizer\n    refresh_token_file: " + dir + "/refresh-a\n" +
		"  - appid: wxauthB\n    token: authorizer\n"
	require.NoError(t, os.WriteFile(conf, []byte(text), 0o600))
	return conf, dir
}

func TestProviderConfig(t *testing.T) {
	conf, _ := providerFiles(t, "")
	var stderr bytes.Buffer
	c, err := parseConfig([]string{"-config", conf}, env(map[string]string{"PLAIN_SECRET": "plain-secret"}), &stderr)
	require.NoError(t, err, stderr.String())
	assert.Equal(t, "wxcomp", c.Component.AppID)
	assert.Equal(t, "comp-secret", c.Component.Secret)
	assert.Equal(t, "bearer-1", c.Component.Auth)
	secrets, kinds, err := c.merchantTable()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"wxshop": tokenStable, "wxplain": tokenPlain, "wxauthA": tokenAuthorizer, "wxauthB": tokenAuthorizer}, kinds)
	assert.Equal(t, wechat.StaticSecrets{"wxshop": "shop-secret", "wxplain": "plain-secret"}, secrets, "authorizers have no app secret")
	assert.Equal(t, "refresh-a0", c.Merchants[2].RefreshToken)
	assert.Empty(t, c.Merchants[3].RefreshToken)

	// -token-api sets the kind of the merchants that name none.
	c, err = parseConfig([]string{"-config", conf, "-token-api", "token"}, env(map[string]string{"PLAIN_SECRET": "p"}), &stderr)
	require.NoError(t, err)
	_, kinds, _ = c.merchantTable()
	assert.Equal(t, tokenPlain, kinds["wxshop"])
}

// TestProviderConfigErrors: each combination that cannot work is refused
// at parse time, naming the setting.
func TestProviderConfigErrors(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "s")
	require.NoError(t, os.WriteFile(secret, []byte("x\n"), 0o600))
	authorizer := "merchants:\n  - appid: wxA\n    token: authorizer\n"
	comp := "component-appid: wxcomp\ncomponent-secret-file: " + secret + "\n"
	for name, tc := range map[string]struct{ yaml, want string }{
		"authorizer without platform": {authorizer, "merchants with token: authorizer need -component-appid"},
		"no ticket source":            {comp + authorizer, "-component-appid needs a component_verify_ticket"},
		"no component secret":         {"component-appid: wxcomp\nverify-ticket-file: /t\n" + authorizer, "-component-appid needs -component-secret-file"},
		"listen without auth":         {comp + "provider-listen: 127.0.0.1:0\n" + authorizer, "-provider-listen needs -provider-auth-file"},
		"redis key without redis":     {comp + "verify-ticket-redis-key: k\n" + authorizer, "-verify-ticket-redis-key needs -redis"},
		"ticket file alone":           {"verify-ticket-file: /t\nsecrets-file: " + secret + "\n", "-verify-ticket-file needs -component-appid"},
		"secret on an authorizer":     {comp + "verify-ticket-file: /t\n" + authorizer + "    secret_env: S\n", "line 5: merchant wxA: an authorizer has no app secret here"},
		"refresh token elsewhere":     {"merchants:\n  - appid: wxB\n    secret_env: S\n    refresh_token_env: S\n", "line 2: merchant wxB: a refresh token is for token: authorizer only"},
		"bad token kind":              {"merchants:\n  - appid: wxB\n    token: oauth\n    secret_env: S\n", "line 3: token \"oauth\""},
		"bad token api":               {"token-api: oauth\nsecrets-file: " + secret + "\n", "-token-api \"oauth\""},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			require.NoError(t, os.WriteFile(path, []byte(tc.yaml), 0o600))
			var stderr bytes.Buffer
			_, err := parseConfig([]string{"-config", path}, env(map[string]string{"S": "x"}), &stderr)
			require.ErrorIs(t, err, errUsage)
			assert.Contains(t, stderr.String(), tc.want)
		})
	}
}

// providerService is testService with the platform, on sandbox.
func providerService(t *testing.T, sandbox *wechattest.Server) (*service, *bytes.Buffer) {
	t.Helper()
	conf, _ := providerFiles(t, "wechat-url: "+sandbox.URL+"\n")
	c, err := parseConfig([]string{"-config", conf}, env(map[string]string{"PLAIN_SECRET": "plain-secret"}), &bytes.Buffer{})
	require.NoError(t, err)
	var logs bytes.Buffer
	s := testService(t, c, &logs)
	s.provider, err = newProvider(c.Component, s.tokens, nil, s.log)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.provider.ln.Close() })
	return s, &logs
}

// TestTokenRoutes: each merchant's token comes from its own kind of
// source; an appid not configured is ErrUnknownAppID, which dead-letters
// its event as configuration.
func TestTokenRoutes(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wxshop", "shop-secret")
	sandbox.AddApp("wxplain", "plain-secret")
	sandbox.AddComponent("wxcomp", "comp-secret", "ticket-1")
	sandbox.AddAuthorizer("wxcomp", "wxauthA", "refresh-a0")
	s, logs := providerService(t, sandbox)
	ctx := context.Background()

	require.NoError(t, s.provider.seed(ctx, s.cfg.Merchants))
	assert.Contains(t, logs.String(), "authorizer_refresh_token stored from the configuration\" appid=wxauthA")
	require.NoError(t, s.tokens.component().SetVerifyTicket(ctx, "ticket-1"))
	for _, appid := range []string{"wxshop", "wxplain", "wxauthA"} {
		tok, err := s.tokens.Token(ctx, appid)
		require.NoError(t, err, appid)
		assert.NotEmpty(t, tok)
	}
	assert.Len(t, sandbox.CallsTo("stable_token"), 1)
	assert.Len(t, sandbox.CallsTo("token"), 1)
	assert.Len(t, sandbox.CallsTo("api_authorizer_token"), 1)
	assert.NotEqual(t, "refresh-a0", sandbox.RefreshToken("wxauthA"), "rotated")

	_, err := s.tokens.Token(ctx, "wxauthB")
	assert.ErrorIs(t, err, wechat.ErrNoRefreshToken, "an authorizer whose refresh token has not come yet")
	_, err = s.tokens.Token(ctx, "wxnobody")
	require.ErrorIs(t, err, wechat.ErrUnknownAppID)
	assert.Equal(t, wechat.ClassConfiguration, wechat.ClassOf(err))
	assert.NotContains(t, logs.String(), "secret")
	assert.NotContains(t, logs.String(), "refresh-a0")
}

// TestProviderEndpoint: the endpoint stores a ticket and a refresh token
// for a caller with the bearer token, refuses anyone else, and a reload
// rotates the bearer token.
func TestProviderEndpoint(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddComponent("wxcomp", "comp-secret", "ticket-9")
	sandbox.AddAuthorizer("wxcomp", "wxauthB", "refresh-b0")
	s, logs := providerService(t, sandbox)
	srv := httptest.NewServer(s.provider.handler())
	defer srv.Close()
	ctx := context.Background()
	put := func(path, bearer, body string) int {
		req, err := http.NewRequest(http.MethodPut, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}

	assert.Equal(t, http.StatusUnauthorized, put("/component_verify_ticket", "", "ticket-9"))
	assert.Equal(t, http.StatusUnauthorized, put("/component_verify_ticket", "bearer-2", "ticket-9"))
	_, err := s.tokens.component().VerifyTicketExpiry(ctx)
	require.ErrorIs(t, err, wechat.ErrNoVerifyTicket, "refused requests store nothing")
	assert.Equal(t, http.StatusBadRequest, put("/component_verify_ticket", "bearer-1", "  \n"))
	assert.Equal(t, http.StatusRequestEntityTooLarge, put("/component_verify_ticket", "bearer-1", strings.Repeat("x", maxProviderBody+1)))
	assert.Equal(t, http.StatusNoContent, put("/component_verify_ticket", "bearer-1", "ticket-9\n"))
	_, err = s.tokens.component().VerifyTicketExpiry(ctx)
	require.NoError(t, err)

	assert.Equal(t, http.StatusNotFound, put("/authorizers/wxshop/refresh_token", "bearer-1", "refresh-x"), "not an authorizer")
	assert.Equal(t, http.StatusNotFound, put("/authorizers/wxtypo/refresh_token", "bearer-1", "refresh-x"), "not a merchant")
	assert.Equal(t, http.StatusNoContent, put("/authorizers/wxauthB/refresh_token", "bearer-1", "refresh-b0"))
	_, err = s.tokens.Token(ctx, "wxauthB")
	require.NoError(t, err, "traced with the refresh token the endpoint took")
	resp, err := http.Post(srv.URL+"/component_verify_ticket", "text/plain", strings.NewReader("t"))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// A reload with a new bearer token: the old one is refused from then on.
	next := s.cfg
	next.Component.Auth = "bearer-2"
	require.NoError(t, s.reload(next))
	assert.Equal(t, http.StatusUnauthorized, put("/component_verify_ticket", "bearer-1", "ticket-9"))
	assert.Equal(t, http.StatusNoContent, put("/component_verify_ticket", "bearer-2", "ticket-9"))
	// A reload without the endpoint: it runs until a restart, on its token.
	gone := next
	gone.Component.Listen, gone.Component.AuthFile, gone.Component.Auth = "", "", ""
	require.NoError(t, s.reload(gone))
	assert.Equal(t, http.StatusNoContent, put("/component_verify_ticket", "bearer-2", "ticket-9"))
	assert.Contains(t, logs.String(), "restart_needed=[component]")
	assert.NotContains(t, logs.String(), "bearer-")
	assert.NotContains(t, logs.String(), "ticket-9")
}

// TestProviderTicketSources: a ticket file and a Redis key are read at
// start and polled; a ticket is stored with the age it has (the file's
// modification time, the key's TTL), once; a stale file or a key without
// expiry is reported once and not used; an older ticket never replaces a
// newer one.
func TestProviderTicketSources(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	s, logs := providerService(t, sandbox)
	p := s.provider
	ctx := context.Background()
	dir := t.TempDir()
	p.cfg.TicketFile = filepath.Join(dir, "ticket")
	p.cfg.TicketRedisKey = testredis.Prefix(t) + "ticket"
	p.rdb = testredis.Client(t)
	expiry := func() time.Time {
		t.Helper()
		exp, err := s.tokens.component().VerifyTicketExpiry(ctx)
		require.NoError(t, err)
		return exp
	}

	p.poll(ctx) // neither exists yet
	_, err := s.tokens.component().VerifyTicketExpiry(ctx)
	require.ErrorIs(t, err, wechat.ErrNoVerifyTicket)
	assert.NotContains(t, logs.String(), "not taken", "a source not written yet is no warning")

	require.NoError(t, os.WriteFile(p.cfg.TicketFile, []byte("ticket-old\n"), 0o600))
	old := time.Now().Add(-13 * time.Hour)
	require.NoError(t, os.Chtimes(p.cfg.TicketFile, old, old))
	p.poll(ctx)
	p.poll(ctx)
	assert.Equal(t, 1, strings.Count(logs.String(), `not taken; is the platform's callback writing it?" source=file`), "a stale file is said once")
	_, err = s.tokens.component().VerifyTicketExpiry(ctx)
	require.ErrorIs(t, err, wechat.ErrNoVerifyTicket, "a stale ticket is not used")

	require.NoError(t, p.rdb.Set(ctx, p.cfg.TicketRedisKey, "ticket-redis", 0).Err())
	p.poll(ctx)
	assert.Contains(t, logs.String(), "SET it with EX 43200", "a key without expiry has no age")
	_, err = s.tokens.component().VerifyTicketExpiry(ctx)
	require.ErrorIs(t, err, wechat.ErrNoVerifyTicket)

	require.NoError(t, p.rdb.Set(ctx, p.cfg.TicketRedisKey, "ticket-redis", 10*time.Hour).Err()) // pushed 2 h ago
	p.poll(ctx)
	p.poll(ctx)
	assert.Equal(t, 1, strings.Count(logs.String(), `component_verify_ticket stored" source=redis`), "a ticket is stored once")
	assert.WithinDuration(t, time.Now().Add(10*time.Hour), expiry(), 5*time.Second, "the key's age is kept")

	hourAgo := time.Now().Add(-time.Hour)
	require.NoError(t, os.WriteFile(p.cfg.TicketFile, []byte("ticket-new\n"), 0o600))
	require.NoError(t, os.Chtimes(p.cfg.TicketFile, hourAgo, hourAgo))
	p.poll(ctx)
	assert.Contains(t, logs.String(), `component_verify_ticket stored" source=file`)
	assert.WithinDuration(t, hourAgo.Add(wechat.VerifyTicketTTL), expiry(), time.Second, "the file's age is kept")
	p.poll(ctx) // the Redis key's older ticket stays out
	assert.WithinDuration(t, hourAgo.Add(wechat.VerifyTicketTTL), expiry(), time.Second, "an older ticket never replaces a newer")
	assert.NotContains(t, logs.String(), "ticket-new")
	assert.NotContains(t, logs.String(), "ticket-redis")
}

// TestProviderAwaitTicket: with authorizers the service consumes nothing
// until a ticket is stored, and fails after -verify-ticket-wait without
// one; at the default wait (20 min), under synctest's clock.
func TestProviderAwaitTicket(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	s, logs := providerService(t, sandbox)
	p := s.provider
	require.Equal(t, 20*time.Minute, p.cfg.TicketWait, "the default")
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		err := p.awaitTicket(context.Background())
		require.ErrorContains(t, err, "no component_verify_ticket within -verify-ticket-wait 20m0s")
		assert.Equal(t, 20*time.Minute+time.Second, time.Since(start), "checked every second up to the bound")
	})
	assert.Equal(t, 1, strings.Count(logs.String(), "waiting for a component_verify_ticket before consuming"), "said once")

	synctest.Test(t, func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- p.awaitTicket(context.Background()) }()
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("the wait ended without a ticket")
		default:
		}
		require.NoError(t, s.tokens.component().SetVerifyTicket(context.Background(), "ticket-1"))
		time.Sleep(time.Second)
		synctest.Wait()
		select {
		case err := <-done:
			require.NoError(t, err)
		default:
			t.Fatal("the wait did not end a second after the ticket came")
		}
	})
}

// TestReloadProvider: a reload adds an authorizer, moves a merchant to
// another token API and rotates the platform's secret; the platform's
// appid needs a restart and a reload that would need it is refused.
func TestReloadProvider(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	s, logs := providerService(t, sandbox)
	cur := s.tokens.p.Load()

	next := s.cfg
	next.Merchants = append([]merchant(nil), s.cfg.Merchants...)
	next.Merchants[0].Token = tokenPlain // wxshop: stable_token → token
	next.Merchants = append(next.Merchants, merchant{AppID: "wxauthC", Token: tokenAuthorizer, RefreshToken: "refresh-c0"})
	next.Component.Secret = "comp-secret-2"
	require.ErrorContains(t, s.reload(next), "new authorizers, but platform wxcomp: wechat: no component_verify_ticket stored")
	assert.NotContains(t, s.tokens.p.Load().kinds, "wxauthC", "refused: nothing changed")
	require.NoError(t, s.tokens.component().SetVerifyTicket(context.Background(), "ticket-1"))
	require.NoError(t, s.reload(next))
	now := s.tokens.p.Load()
	assert.Equal(t, tokenPlain, now.kinds["wxshop"])
	assert.Equal(t, tokenAuthorizer, now.kinds["wxauthC"])
	assert.NotSame(t, cur.component, now.component, "a new secret, a new platform source")
	assert.Contains(t, logs.String(), `merchants_added=[wxauthC] secrets_rotated=[wxcomp] merchants_removed=[] limits_changed=[] restart_needed=[] token_api_changed=[wxshop]`)
	assert.Contains(t, logs.String(), `authorizer_refresh_token stored from the configuration" appid=wxauthC`)

	same := next
	require.NoError(t, s.reload(same))
	assert.Same(t, now.component, s.tokens.p.Load().component, "the same secret keeps the source")

	moved := next
	moved.Component.AppID = "wxcomp2"
	moved.Merchants = append(append([]merchant(nil), next.Merchants...), merchant{AppID: "wxauthD", Token: tokenAuthorizer})
	require.ErrorContains(t, s.reload(moved), `merchant wxauthD: token: authorizer under -component-appid "wxcomp2", which a reload cannot change from "wxcomp"`)
	assert.NotContains(t, s.tokens.p.Load().kinds, "wxauthD", "a refused reload changes nothing")
	moved.Merchants = next.Merchants
	require.NoError(t, s.reload(moved))
	assert.Contains(t, logs.String(), `restart_needed=[component]`)
	assert.NotContains(t, logs.String(), "comp-secret")
}

// TestConfigPrintsNoSecret: the whole configuration, printed, shows no
// secret, refresh token or bearer token.
func TestConfigPrintsNoSecret(t *testing.T) {
	conf, dir := providerFiles(t, "")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kafka"), []byte("kafka-pw\n"), 0o600))
	c, err := parseConfig([]string{"-config", conf, "-kafka-sasl-mechanism", "PLAIN", "-kafka-sasl-user", "u",
		"-kafka-sasl-password-file", dir + "/kafka"}, env(map[string]string{"PLAIN_SECRET": "plain-secret"}), &bytes.Buffer{})
	require.NoError(t, err)
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		out := fmt.Sprintf(verb, c)
		for _, secret := range []string{"comp-secret", "bearer-1", "shop-secret", "plain-secret", "refresh-a0", "kafka-pw"} {
			assert.NotContains(t, out, secret, verb)
		}
		assert.Contains(t, out, "wxauthA")
	}
}

// TestProviderStartStop: start serves the endpoint on its listener; stop
// ends it cleanly (no error logged) and the address is free again.
func TestProviderStartStop(t *testing.T) {
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	s, logs := providerService(t, sandbox)
	p := s.provider
	require.NoError(t, p.start(context.Background(), false))
	addr := p.ln.Addr().String()
	req, err := http.NewRequest(http.MethodPut, "http://"+addr+"/component_verify_ticket", strings.NewReader("ticket-1"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer bearer-1")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	p.stop()
	assert.NotContains(t, logs.String(), "level=ERROR")
	_, err = http.Get("http://" + addr + "/component_verify_ticket")
	assert.ErrorContains(t, err, "connection refused", "stopped")
}
