package wechat

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestSecretsNeverPrinted formats every type that holds a secret or token
// with every verb a log line might use.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret, token = "SECRET-d41d8cd9", "TOKEN-8f00b204"
	srv := tokenServer(t, 7200)
	store := new(MemoryStore)
	if err := store.Save(context.Background(), "token:wx", Token{Value: token, Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	stable, err := NewStableTokenSource(StableTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{"wx": secret}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stable.Token(context.Background(), "wx"); err != nil {
		t.Fatal(err)
	}
	access, err := NewAccessTokenSource(AccessTokenConfig{Secrets: StaticSecrets{"wx": secret}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	client := newTestClient(t, srv.URL, stable)
	values := map[string]any{
		"StaticSecrets":     StaticSecrets{"wx": secret},
		"StaticTokenSource": StaticTokenSource{"wx": token},
		"Token":             Token{Value: token, Expiry: time.Now()},
		"MemoryStore":       store,
		"StableTokenSource": stable,
		"AccessTokenSource": access,
		"Client":            client,
		"Config":            Config{Tokens: StaticTokenSource{"wx": token}},
		"StableTokenConfig": StableTokenConfig{Secrets: StaticSecrets{"wx": secret}, Store: store},
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			out := fmt.Sprintf(verb, v)
			if strings.Contains(out, secret) || strings.Contains(out, token) || strings.Contains(out, "at-1") {
				t.Errorf("%s with %s prints a secret: %s", name, verb, out)
			}
		}
	}
	if got := fmt.Sprint(StaticSecrets{"wx1": secret, "wx0": secret}); got != "wechat.StaticSecrets{wx0:[redacted] wx1:[redacted]}" {
		t.Errorf("StaticSecrets prints %q", got)
	}
}

// TestLogsAndErrorsShowNoSecret runs the paths that log and fail — fetch,
// rejection, refresh, retry, a token endpoint error — and searches every log
// record and error for the secrets and the tokens the sandbox issued.
func TestLogsAndErrorsShowNoSecret(t *testing.T) {
	serverClock, clientClock := newFakeClock(), newFakeClock()
	srv := sharingSandbox(t, serverClock)
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src, err := NewAccessTokenSource(AccessTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{appID: appSecret, "wxwrong": "wrong-secret-1"},
		Now: clientClock.Now, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Config{BaseURL: srv.URL, Tokens: src, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var errs []error
	_, err = c.TraceWaybill(ctx, appID, sampleTrace())
	errs = append(errs, err)
	serverClock.Advance(11 * time.Minute) // 42001, refresh, retry
	_, err = c.TraceWaybill(ctx, appID, sampleTrace())
	errs = append(errs, err)
	_, err = c.TraceWaybill(ctx, "wxwrong", sampleTrace()) // the token endpoint refuses
	errs = append(errs, err)
	if errs[0] != nil || errs[1] != nil || errs[2] == nil {
		t.Fatalf("errors %v", errs)
	}
	if !strings.Contains(logs.String(), "token rejected") || !strings.Contains(logs.String(), "fetched token") {
		t.Fatalf("expected refresh records, got %s", logs.String())
	}
	secrets := []string{appSecret, "wrong-secret-1"}
	for _, call := range srv.Calls() {
		if tok := call.Query.Get("access_token"); tok != "" {
			secrets = append(secrets, tok)
		}
	}
	if len(secrets) < 4 {
		t.Fatalf("found only %d secrets to look for", len(secrets))
	}
	text := logs.String() + fmt.Sprint(errs)
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%q appears in logs or errors:\n%s", s, text)
		}
	}
}
