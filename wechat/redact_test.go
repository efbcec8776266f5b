package wechat

import (
	"context"
	"fmt"
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
