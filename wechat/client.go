package wechat

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/waybillkit/waybill/internal/rawjson"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// DefaultBaseURL is WeChat's API host.
const DefaultBaseURL = "https://api.weixin.qq.com"

// Config configures a [Client]. The zero value is invalid only because Tokens
// is required; every other field has a default.
type Config struct {
	// BaseURL is the API root. "" means DefaultBaseURL. Point it at a
	// wechattest.Server in tests.
	BaseURL string

	// HTTPClient sends the requests. nil means a client with TLS verification
	// on (never InsecureSkipVerify), TLS 1.2 or newer, HTTP/2 where the server
	// offers it, up to MaxIdleConnsPerHost connections kept for reuse, and a
	// 30 s timeout per request. The request's context deadline applies
	// either way.
	HTTPClient *http.Client
	// IdleConns is how many idle connections the default HTTP client keeps
	// to WeChat: size it to the calls in flight at once (partitions ×
	// concurrency per partition), or calls beyond it dial, a TLS handshake
	// each. Zero means MaxIdleConnsPerHost. Ignored with HTTPClient.
	IdleConns int

	// Tokens gives the access token for each appid. Required.
	Tokens TokenSource

	// Classify maps an errcode to a Class. nil means DefaultClassify; wrap
	// DefaultClassify to override or extend the table.
	Classify func(code int) Class

	// Logger receives one record per token refresh forced by WeChat rejecting
	// a token. Tokens and secrets are never logged. nil means no logging.
	Logger *slog.Logger

	// OnCall, if not nil, is called after every request the client makes,
	// retries included, and those that never reached WeChat (no connection:
	// ErrNotSent, class transient), in the calling goroutine: keep it
	// quick.
	// Package metrics counts and times calls with it.
	OnCall func(CallInfo)

	// TracerProvider makes a client span per request (see the package doc).
	// Nil means otel.GetTracerProvider(): a no-op unless the program set one.
	TracerProvider trace.TracerProvider
}

// Validate reports what is wrong with c, if anything.
func (c *Config) Validate() error {
	var errs []error
	if c.Tokens == nil {
		errs = append(errs, errors.New("Tokens is required"))
	}
	if err := validateBaseURL(c.BaseURL); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wechat: invalid Config: %w", err)
	}
	return nil
}

func validateBaseURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("BaseURL: %w", err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
		return fmt.Errorf("BaseURL %q: want an absolute http(s) URL without query", s)
	}
	return nil
}

// wireHooks are the observers every config offers: OnCall and
// TracerProvider.
type wireHooks struct {
	onCall func(CallInfo)
	tp     trace.TracerProvider // nil: otel's global provider
}

// newWire builds the shared plumbing from the common settings.
func newWire(base string, hc *http.Client, classify func(int) Class, hooks wireHooks) *wire {
	if base == "" {
		base = DefaultBaseURL
	}
	if hc == nil {
		hc = newHTTPClient(MaxIdleConnsPerHost)
	}
	if classify == nil {
		classify = DefaultClassify
	}
	tp := hooks.tp
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &wire{base: strings.TrimRight(base, "/"), hc: hc, classify: classify,
		onCall: hooks.onCall, tracer: tp.Tracer(tracerName)}
}

// MaxIdleConnsPerHost is how many idle connections the default HTTP client
// keeps to WeChat unless Config.IdleConns says: as many as calls are likely
// in flight at once, so that a busy client reuses its connections instead
// of dialing.
const MaxIdleConnsPerHost = 64

// newHTTPClient is the default HTTP client, keeping idle connections.
func newHTTPClient(idle int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	// Every call goes to one host: Go's default of 2 idle connections per
	// host made calls beyond the second in flight dial (a TLS handshake
	// each, against WeChat) and drop their connection afterwards.
	t.MaxIdleConnsPerHost = idle
	t.MaxIdleConns = 4 * idle
	return &http.Client{Transport: t, Timeout: 30 * time.Second}
}

// Client calls the open_msg API for any number of appids. It is safe for
// concurrent use; create one and share it.
type Client struct {
	wire   *wire
	tokens TokenSource
	log    *slog.Logger
}

// NewClient validates cfg and returns a Client.
func NewClient(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.HTTPClient
	if hc == nil && cfg.IdleConns > 0 {
		hc = newHTTPClient(cfg.IdleConns)
	}
	w := newWire(cfg.BaseURL, hc, cfg.Classify, wireHooks{cfg.OnCall, cfg.TracerProvider})
	return &Client{wire: w, tokens: cfg.Tokens, log: log}, nil
}

// String describes the client without its token source's contents.
func (c *Client) String() string { return "wechat.Client{" + c.wire.base + "}" }

// GoString is String: a client holds tokens and must not print them.
func (c *Client) GoString() string { return c.String() }

// post calls one API path for appid: it encodes in once, authorizes with the
// appid's token, and decodes the answer into out.
func (c *Client) post(ctx context.Context, appid, endpoint, path string, in, out any) error {
	if appid == "" {
		return notSent(fmt.Errorf("wechat %s: empty appid", endpoint))
	}
	body, err := rawjson.Marshal(in)
	if err != nil {
		return notSent(fmt.Errorf("wechat %s: encode request: %w", endpoint, err))
	}
	if string(body) == "null" {
		return notSent(fmt.Errorf("wechat %s: nil request", endpoint))
	}
	return authorized(ctx, c.tokens, appid, endpoint, c.log, func(tok string) error {
		r := &request{appid: appid, method: http.MethodPost, endpoint: endpoint, path: path,
			query: url.Values{"access_token": {tok}}, body: body}
		return c.wire.do(ctx, r, out)
	})
}

// authorized runs call with src's token for key. If WeChat rejects the token
// (ClassToken), it asks src to refresh that very token, which fetches only if
// nobody has yet, and runs call once more. It never loops.
//
// Its error is ErrNotSent only if no attempt reached WeChat: once WeChat has
// answered the first, neither a failed refresh nor an unsent retry is.
func authorized(ctx context.Context, src TokenSource, key, endpoint string, log *slog.Logger, call func(tok string) error) error {
	tok, err := src.Token(ctx, key)
	if err != nil {
		return notSent(fmt.Errorf("wechat %s: token for %s: %w", endpoint, key, err))
	}
	err = call(tok)
	var we *Error
	if !errors.As(err, &we) || we.Class != ClassToken {
		return err
	}
	log.LogAttrs(ctx, slog.LevelInfo, "wechat: token rejected, refreshing once",
		slog.String("appid", key), slog.String("endpoint", endpoint), slog.Int("errcode", we.Code))
	fresh, rerr := src.Refresh(ctx, key, tok)
	if rerr != nil {
		// A fetching source's own unsent request must not mark this call.
		return sent(fmt.Errorf("wechat %s: errcode %d rejected the token of %s and refreshing it failed: %w",
			endpoint, we.Code, key, rerr))
	}
	return sent(call(fresh))
}
