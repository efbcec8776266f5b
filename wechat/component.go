package wechat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/waybillkit/waybill/internal/rawjson"
	"go.opentelemetry.io/otel/trace"
)

// VerifyTicketTTL is how long a component_verify_ticket is valid after
// WeChat pushed it.
const VerifyTicketTTL = 12 * time.Hour

// ComponentConfig configures a [ComponentTokenSource], the token source of a
// third-party platform (service provider) acting for many merchant appids.
type ComponentConfig struct {
	// BaseURL is the API root. "" means DefaultBaseURL.
	BaseURL string
	// HTTPClient fetches tokens. nil means the same default as Config.HTTPClient.
	HTTPClient *http.Client
	// ComponentAppID is the platform's appid. Required.
	ComponentAppID string
	// ComponentSecret is the platform's appsecret. Required. Never printed.
	ComponentSecret string
	// Store keeps the component_verify_ticket, the component_access_token,
	// each merchant's authorizer_access_token and — the one thing that cannot
	// be fetched again — each merchant's authorizer_refresh_token. nil means a
	// new MemoryStore, which loses the refresh tokens on exit: use a durable
	// shared store (package redisstore) in production.
	Store TokenStore
	// Early is how long before expiry a token is renewed: min(Early, a fifth
	// of the lifetime WeChat reported in expires_in). 0 means DefaultEarly
	// (1 min); it must stay under 5 min.
	Early time.Duration
	// LockTTL bounds one fetch and how long it holds the store's lock. 0 means
	// DefaultLockTTL.
	LockTTL time.Duration
	// Now is the clock for token expiry. nil means time.Now.
	Now func() time.Time
	// Logger receives one record per token fetched (appids and expiry only).
	// nil means no logging.
	Logger *slog.Logger
	// OnCall, if not nil, is called after every token request, as
	// Config.OnCall.
	OnCall func(CallInfo)
	// TracerProvider makes a span per token request, as Config's.
	TracerProvider trace.TracerProvider
}

// Validate reports what is wrong with c, if anything.
func (c *ComponentConfig) Validate() error {
	var errs []error
	if c.ComponentAppID == "" {
		errs = append(errs, errors.New("ComponentAppID is required"))
	}
	if c.ComponentSecret == "" {
		errs = append(errs, errors.New("ComponentSecret is required"))
	}
	errs = append(errs, validateBaseURL(c.BaseURL), c.cacheSettings().validate())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wechat: invalid ComponentConfig: %w", err)
	}
	return nil
}

func (c *ComponentConfig) cacheSettings() cacheSettings {
	return cacheSettings{store: c.Store, early: c.Early, lockTTL: c.LockTTL, now: c.Now, log: c.Logger}
}

// String shows the platform's appid, never its secret.
func (c ComponentConfig) String() string {
	return "wechat.ComponentConfig{ComponentAppID:" + c.ComponentAppID + " ComponentSecret:[redacted]}"
}

// GoString is String.
func (c ComponentConfig) GoString() string { return c.String() }

// ComponentTokenSource gives each authorized merchant appid its
// authorizer_access_token, obtained with the platform's component_access_token
// (itself obtained with the pushed component_verify_ticket). Every fetch of an
// authorizer_access_token also rotates the merchant's authorizer_refresh_token;
// the new one is saved to the store before the access token is used, because
// the old one dies 5 minutes later. It implements TokenSource; safe for
// concurrent use by many processes sharing one Store.
//
// Wire the platform's ticket push to SetVerifyTicket, and each merchant's
// authorization (api_query_auth's authorizer_refresh_token) to
// SetRefreshToken.
type ComponentTokenSource struct {
	wire      *wire
	appid     string
	secret    string
	cache     *cache
	component componentTokens
}

// NewComponentTokenSource validates cfg and returns a ComponentTokenSource.
func NewComponentTokenSource(cfg ComponentConfig) (*ComponentTokenSource, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &ComponentTokenSource{
		wire:   newWire(cfg.BaseURL, cfg.HTTPClient, nil, wireHooks{cfg.OnCall, cfg.TracerProvider}),
		appid:  cfg.ComponentAppID,
		secret: cfg.ComponentSecret,
		cache:  newCache(cfg.cacheSettings()),
	}
	s.component = componentTokens{s}
	return s, nil
}

func (s *ComponentTokenSource) ticketKey() string { return "component_verify_ticket:" + s.appid }
func (s *ComponentTokenSource) authorizerKey(appid string) string {
	return "authorizer_access_token:" + s.appid + ":" + appid
}
func (s *ComponentTokenSource) refreshKey(appid string) string {
	return "authorizer_refresh_token:" + s.appid + ":" + appid
}

// SetVerifyTicket stores the component_verify_ticket WeChat pushed (every 10
// minutes, valid 12 hours), as pushed now. Call it from the platform's push
// handler after decrypting the push.
func (s *ComponentTokenSource) SetVerifyTicket(ctx context.Context, ticket string) error {
	_, err := s.SetVerifyTicketAt(ctx, ticket, s.cache.now())
	return err
}

// SetVerifyTicketAt stores a component_verify_ticket WeChat pushed at
// pushedAt, valid VerifyTicketTTL from then, unless the stored one lives
// longer (a later push is stored already); it reports whether it stored it.
// It is for a ticket relayed through a file or a key, whose age is known.
func (s *ComponentTokenSource) SetVerifyTicketAt(ctx context.Context, ticket string, pushedAt time.Time) (bool, error) {
	if ticket == "" {
		return false, errors.New("wechat: empty component_verify_ticket")
	}
	tok := Token{Value: ticket, Expiry: pushedAt.Add(VerifyTicketTTL)}
	if !s.cache.now().Before(tok.Expiry) {
		return false, fmt.Errorf("wechat: component_verify_ticket pushed at %s has expired", pushedAt.UTC().Format(time.RFC3339))
	}
	stored := false
	err := s.cache.locked(ctx, s.ticketKey(), nil, func(ctx context.Context) error {
		cur, ok, err := s.cache.store.Load(ctx, s.ticketKey())
		if err != nil {
			return fmt.Errorf("load component_verify_ticket: %w", err)
		}
		if ok && (cur.Value == ticket || cur.Expiry.After(tok.Expiry)) {
			return nil
		}
		if err := s.cache.store.Save(ctx, s.ticketKey(), tok); err != nil {
			return fmt.Errorf("save component_verify_ticket: %w", err)
		}
		stored = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("wechat: %w", err)
	}
	return stored, nil
}

// SetRefreshToken stores the authorizer_refresh_token a merchant's
// authorization produced. The source keeps it current from then on. It
// holds the merchant's lock (waiting at most LockTTL), so that a rotation
// in progress with the old one cannot overwrite it afterwards.
func (s *ComponentTokenSource) SetRefreshToken(ctx context.Context, appid, refreshToken string) error {
	if appid == "" || refreshToken == "" {
		return errors.New("wechat: SetRefreshToken needs an appid and a refresh token")
	}
	err := s.cache.locked(ctx, s.authorizerKey(appid), nil, func(ctx context.Context) error {
		return s.cache.store.Save(ctx, s.refreshKey(appid), Token{Value: refreshToken})
	})
	if err != nil {
		return fmt.Errorf("wechat: save authorizer_refresh_token of %s: %w", appid, err)
	}
	return nil
}

// SeedRefreshToken stores refreshToken as merchant appid's
// authorizer_refresh_token unless one is stored already, and reports
// whether it stored it. It is for a refresh token given in configuration,
// which is only a starting point: once the source has rotated it, the
// stored one is newer and the configured one dies 5 minutes later. It
// holds the merchant's lock, so that it never overwrites a rotation in
// progress in another process; it waits for that lock at most LockTTL.
// After a merchant authorizes again, use SetRefreshToken.
func (s *ComponentTokenSource) SeedRefreshToken(ctx context.Context, appid, refreshToken string) (bool, error) {
	if appid == "" || refreshToken == "" {
		return false, errors.New("wechat: SeedRefreshToken needs an appid and a refresh token")
	}
	stored := false
	err := s.cache.locked(ctx, s.authorizerKey(appid), nil, func(ctx context.Context) error {
		tok, ok, err := s.cache.store.Load(ctx, s.refreshKey(appid))
		if err != nil {
			return fmt.Errorf("load authorizer_refresh_token of %s: %w", appid, err)
		}
		if ok && tok.Value != "" {
			return nil
		}
		if err := s.cache.store.Save(ctx, s.refreshKey(appid), Token{Value: refreshToken}); err != nil {
			return fmt.Errorf("save authorizer_refresh_token of %s: %w", appid, err)
		}
		stored = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("wechat: seed refresh token: %w", err)
	}
	return stored, nil
}

// VerifyTicketExpiry returns when the stored component_verify_ticket
// expires, or an error wrapping ErrNoVerifyTicket when none is stored or
// it has expired: what a service checks before it calls for the platform's
// merchants, since without a ticket every such call fails.
func (s *ComponentTokenSource) VerifyTicketExpiry(ctx context.Context) (time.Time, error) {
	tok, ok, err := s.cache.store.Load(ctx, s.ticketKey())
	if err != nil {
		return time.Time{}, fmt.Errorf("wechat: load component_verify_ticket: %w", err)
	}
	if !ok || tok.Value == "" || (!tok.Expiry.IsZero() && !s.cache.now().Before(tok.Expiry)) {
		return time.Time{}, fmt.Errorf("platform %s: %w", s.appid, ErrNoVerifyTicket)
	}
	return tok.Expiry, nil
}

// ComponentAccessToken returns the platform's component_access_token, for the
// platform's other calls.
func (s *ComponentTokenSource) ComponentAccessToken(ctx context.Context) (string, error) {
	return s.component.Token(ctx, s.appid)
}

// Token implements TokenSource: the authorizer_access_token of merchant appid.
func (s *ComponentTokenSource) Token(ctx context.Context, appid string) (string, error) {
	return s.authorizer(ctx, appid, "")
}

// Refresh implements TokenSource.
func (s *ComponentTokenSource) Refresh(ctx context.Context, appid, stale string) (string, error) {
	return s.authorizer(ctx, appid, stale)
}

// String shows the platform's appid, never a secret or token.
func (s *ComponentTokenSource) String() string {
	return "wechat.ComponentTokenSource{" + s.appid + " " + s.wire.base + "}"
}

// GoString is String.
func (s *ComponentTokenSource) GoString() string { return s.String() }

func (s *ComponentTokenSource) authorizer(ctx context.Context, appid, stale string) (string, error) {
	return s.cache.get(ctx, s.authorizerKey(appid), stale, func(ctx context.Context) (Token, error) {
		return s.fetchAuthorizer(ctx, appid)
	})
}

// fetchAuthorizer runs under the authorizer's lock, so that one process at a
// time rotates its refresh token.
func (s *ComponentTokenSource) fetchAuthorizer(ctx context.Context, appid string) (Token, error) {
	refresh, ok, err := s.cache.store.Load(ctx, s.refreshKey(appid))
	if err != nil {
		return Token{}, fmt.Errorf("load authorizer_refresh_token of %s: %w", appid, err)
	}
	if !ok || refresh.Value == "" {
		return Token{}, fmt.Errorf("authorizer %s: %w", appid, ErrNoRefreshToken)
	}
	body, err := rawjson.Marshal(map[string]string{
		"component_appid": s.appid, "authorizer_appid": appid, "authorizer_refresh_token": refresh.Value})
	if err != nil {
		return Token{}, err
	}
	var a struct {
		AccessToken  string `json:"authorizer_access_token"`
		ExpiresIn    int64  `json:"expires_in"`
		RefreshToken string `json:"authorizer_refresh_token"`
	}
	const endpoint = "api_authorizer_token"
	err = authorized(ctx, s.component, s.appid, endpoint, s.cache.log, func(ctok string) error {
		return s.wire.do(ctx, &request{appid: appid, method: http.MethodPost, endpoint: endpoint,
			path: "/cgi-bin/component/api_authorizer_token", query: url.Values{"component_access_token": {ctok}},
			body: body, secrets: []string{refresh.Value}}, &a)
	})
	if err != nil {
		return Token{}, err
	}
	tok, err := newToken(endpoint, a.AccessToken, a.ExpiresIn, s.cache.now())
	if err != nil {
		return Token{}, err
	}
	if a.RefreshToken != "" && a.RefreshToken != refresh.Value {
		if err := s.cache.store.Save(ctx, s.refreshKey(appid), Token{Value: a.RefreshToken}); err != nil {
			// Fail rather than use a token whose refresh token may be lost: the
			// old one still works for 5 minutes, so the next fetch can recover.
			return Token{}, fmt.Errorf("save rotated authorizer_refresh_token of %s: %w", appid, err)
		}
	}
	return tok, nil
}

// componentTokens is the TokenSource of the component_access_token, keyed by
// the platform's appid, so that the api_authorizer_token call refreshes it
// once on 40001/42001 like any other call.
type componentTokens struct{ s *ComponentTokenSource }

func (c componentTokens) Token(ctx context.Context, _ string) (string, error) {
	return c.get(ctx, "")
}

func (c componentTokens) Refresh(ctx context.Context, _, stale string) (string, error) {
	return c.get(ctx, stale)
}

func (c componentTokens) get(ctx context.Context, stale string) (string, error) {
	s := c.s
	return s.cache.get(ctx, "component_access_token:"+s.appid, stale, func(ctx context.Context) (Token, error) {
		ticket, ok, err := s.cache.store.Load(ctx, s.ticketKey())
		if err != nil {
			return Token{}, fmt.Errorf("load component_verify_ticket: %w", err)
		}
		if !ok || ticket.Value == "" || (!ticket.Expiry.IsZero() && !s.cache.now().Before(ticket.Expiry)) {
			return Token{}, fmt.Errorf("platform %s: %w", s.appid, ErrNoVerifyTicket)
		}
		body, err := rawjson.Marshal(map[string]string{"component_appid": s.appid,
			"component_appsecret": s.secret, "component_verify_ticket": ticket.Value})
		if err != nil {
			return Token{}, err
		}
		var a struct {
			Token     string `json:"component_access_token"`
			ExpiresIn int64  `json:"expires_in"`
		}
		r := &request{appid: s.appid, method: http.MethodPost, endpoint: "api_component_token",
			path: "/cgi-bin/component/api_component_token", body: body, secrets: []string{s.secret, ticket.Value}}
		if err := credentialCall(ctx, s.wire, r, &a); err != nil {
			return Token{}, err
		}
		return newToken(r.endpoint, a.Token, a.ExpiresIn, s.cache.now())
	})
}
