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

// StableTokenConfig configures a [StableTokenSource]. Only Secrets is required.
type StableTokenConfig struct {
	// BaseURL is the API root. "" means DefaultBaseURL.
	BaseURL string
	// HTTPClient fetches tokens. nil means the same default as Config.HTTPClient.
	HTTPClient *http.Client
	// Secrets gives each appid's AppSecret. Required.
	Secrets Secrets
	// Store keeps the tokens. nil means a new MemoryStore: one process.
	Store TokenStore
	// Early is how long before expiry a token is renewed: min(Early, a fifth
	// of the lifetime WeChat reported in expires_in), so that a short-lived
	// token is not fetched again on every call. 0 means DefaultEarly (1 min);
	// it must stay under 5 min, the least lifetime stable_token hands out.
	Early time.Duration
	// LockTTL bounds one fetch and how long it holds the store's lock. 0 means
	// DefaultLockTTL (30 s).
	LockTTL time.Duration
	// Now is the clock for token expiry. nil means time.Now.
	Now func() time.Time
	// Logger receives one record per token fetched (appid and expiry only).
	// nil means no logging.
	Logger *slog.Logger
	// OnCall, if not nil, is called after every token request, as
	// Config.OnCall.
	OnCall func(CallInfo)
	// TracerProvider makes a span per token request, as Config's.
	TracerProvider trace.TracerProvider
}

// AccessTokenConfig configures an [AccessTokenSource]; its fields mean what
// StableTokenConfig's do. For several processes, Store must be shared
// (package redisstore): cgi-bin/token invalidates the previous token.
type AccessTokenConfig StableTokenConfig

// Validate reports what is wrong with c, if anything.
func (c *StableTokenConfig) Validate() error {
	var errs []error
	if c.Secrets == nil {
		errs = append(errs, errors.New("Secrets is required"))
	}
	errs = append(errs, validateBaseURL(c.BaseURL), c.cacheSettings().validate())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wechat: invalid token config: %w", err)
	}
	return nil
}

// Validate reports what is wrong with c, if anything.
func (c *AccessTokenConfig) Validate() error { return (*StableTokenConfig)(c).Validate() }

func (c *StableTokenConfig) cacheSettings() cacheSettings {
	return cacheSettings{store: c.Store, early: c.Early, lockTTL: c.LockTTL, now: c.Now, log: c.Logger}
}

// credentialSource fetches tokens from an appid and its secret, by either
// cgi-bin/stable_token or cgi-bin/token.
type credentialSource struct {
	wire    *wire
	secrets Secrets
	cache   *cache
	stable  bool
}

func newCredentialSource(cfg *StableTokenConfig, stable bool) (*credentialSource, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &credentialSource{
		wire:    newWire(cfg.BaseURL, cfg.HTTPClient, nil, wireHooks{cfg.OnCall, cfg.TracerProvider}),
		secrets: cfg.Secrets,
		cache:   newCache(cfg.cacheSettings()),
		stable:  stable,
	}, nil
}

func (s *credentialSource) key(appid string) string {
	if s.stable {
		return "stable_token:" + appid
	}
	return "token:" + appid
}

func (s *credentialSource) get(ctx context.Context, appid, stale string) (string, error) {
	return s.cache.get(ctx, s.key(appid), stale, func(ctx context.Context) (Token, error) {
		return s.fetch(ctx, appid)
	})
}

// tokenAnswer is what the token endpoints return.
type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

func (s *credentialSource) fetch(ctx context.Context, appid string) (Token, error) {
	secret, err := s.secrets.Secret(ctx, appid)
	if err != nil {
		return Token{}, err
	}
	r := &request{appid: appid, method: http.MethodGet, endpoint: "token", path: "/cgi-bin/token",
		query: url.Values{"grant_type": {"client_credential"}, "appid": {appid}, "secret": {secret}}}
	if s.stable {
		body, err := rawjson.Marshal(map[string]any{
			"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": false})
		if err != nil {
			return Token{}, err
		}
		r = &request{appid: appid, method: http.MethodPost, endpoint: "stable_token", path: "/cgi-bin/stable_token",
			body: body, secrets: []string{secret}}
	}
	var a tokenAnswer
	if err := credentialCall(ctx, s.wire, r, &a); err != nil {
		return Token{}, err
	}
	return newToken(r.endpoint, a.AccessToken, a.ExpiresIn, s.cache.now())
}

// credentialCall calls a token endpoint authenticated by a secret. There,
// 40001 means a wrong secret, not a stale token: an operator must act.
func credentialCall(ctx context.Context, w *wire, r *request, out any) error {
	err := w.do(ctx, r, out)
	var we *Error
	if errors.As(err, &we) && we.Class == ClassToken {
		we.Class = ClassConfiguration
	}
	return err
}

// newToken checks a token endpoint's answer. A missing expires_in is taken as
// WeChat's documented 7,200 s.
func newToken(endpoint, value string, expiresIn int64, now time.Time) (Token, error) {
	if value == "" {
		return Token{}, fmt.Errorf("wechat %s: answer without a token", endpoint)
	}
	if expiresIn <= 0 {
		expiresIn = 7200
	}
	life := time.Duration(expiresIn) * time.Second
	return Token{Value: value, Expiry: now.Add(life), Lifetime: life}, nil
}

// Token implements TokenSource.
func (s *credentialSource) Token(ctx context.Context, appid string) (string, error) {
	return s.get(ctx, appid, "")
}

// Refresh implements TokenSource.
func (s *credentialSource) Refresh(ctx context.Context, appid, stale string) (string, error) {
	return s.get(ctx, appid, stale)
}

// String describes the source without secrets or tokens.
func (s *credentialSource) String() string {
	name := "wechat.AccessTokenSource{"
	if s.stable {
		name = "wechat.StableTokenSource{"
	}
	return name + s.wire.base + "}"
}

// GoString is String.
func (s *credentialSource) GoString() string { return s.String() }

// StableTokenSource gets access tokens from cgi-bin/stable_token in normal
// mode, which returns the same token while it is valid; independent processes
// may each call it safely, and a shared Store only saves calls. It never uses
// force_refresh (20 a day): on a rejected token it asks again in normal mode,
// which answers with the renewed token once WeChat has renewed it. Not
// callable by third-party platforms (use ComponentTokenSource). It implements
// TokenSource.
type StableTokenSource struct{ *credentialSource }

// NewStableTokenSource validates cfg and returns a StableTokenSource.
func NewStableTokenSource(cfg StableTokenConfig) (*StableTokenSource, error) {
	src, err := newCredentialSource(&cfg, true)
	if err != nil {
		return nil, err
	}
	return &StableTokenSource{src}, nil
}

// AccessTokenSource gets access tokens from cgi-bin/token. Every fetch there
// invalidates the previous token after a 5-minute overlap, so all processes
// using an appid must share one Store: they then make one fetch per token
// lifetime between them. Prefer StableTokenSource unless you must use this
// endpoint. It implements TokenSource.
type AccessTokenSource struct{ *credentialSource }

// NewAccessTokenSource validates cfg and returns an AccessTokenSource.
func NewAccessTokenSource(cfg AccessTokenConfig) (*AccessTokenSource, error) {
	src, err := newCredentialSource((*StableTokenConfig)(&cfg), false)
	if err != nil {
		return nil, err
	}
	return &AccessTokenSource{src}, nil
}
