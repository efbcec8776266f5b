package wechat

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// closedAddr returns an http:// URL on 127.0.0.1 where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// signalDeadline is a context whose deadline passes when the test closes
// done, so that a test ends a call at a chosen step without racing a timer.
type signalDeadline struct {
	context.Context
	done chan struct{}
}

func newSignalDeadline() *signalDeadline {
	return &signalDeadline{Context: context.Background(), done: make(chan struct{})}
}

func (c *signalDeadline) Done() <-chan struct{} { return c.done }

func (c *signalDeadline) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func wantNotSent(t *testing.T, err error, want bool) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	if got := errors.Is(err, ErrNotSent); got != want {
		t.Fatalf("errors.Is(%v, ErrNotSent) = %v, want %v", err, got, want)
	}
	if !strings.HasPrefix(err.Error(), "wechat trace_waybill: ") {
		t.Errorf("message %q does not name the endpoint first", err)
	}
	if strings.Contains(err.Error(), "tok-") || strings.Contains(err.Error(), "secret-token") {
		t.Errorf("message shows the token: %v", err)
	}
}

func TestClosedPortIsNotSent(t *testing.T) {
	c := newTestClient(t, closedAddr(t), StaticTokenSource{"wxapp": "secret-token"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	wantNotSent(t, err, true)
	if ClassOf(err) != ClassTransient {
		t.Errorf("class %v, want transient as before", ClassOf(err))
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Errorf("err = %v, want the dial error kept in the chain", err)
	}
}

func TestTLSHandshakeFailureIsNotSent(t *testing.T) {
	var reached atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake failure is the point
	srv.StartTLS()
	defer srv.Close()
	// The default client verifies certificates; httptest's is self-signed.
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "secret-token"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	wantNotSent(t, err, true)
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Errorf("err = %v, want a certificate verification error", err)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("handler reached %d times", n)
	}
}

func TestDeadlineWhileDialingIsNotSent(t *testing.T) {
	ctx := newSignalDeadline()
	hung := make(chan struct{})
	defer close(hung)
	hc := &http.Client{Transport: &http.Transport{
		// net/http dials on for its pool after the caller gave up, so the
		// dial waits for the test's end, not for the request's context.
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			close(ctx.done) // the deadline passes while the connection is being made
			<-hung
			return nil, errors.New("dial abandoned")
		},
	}}
	c, err := NewClient(Config{BaseURL: "http://wechat.invalid", HTTPClient: hc, Tokens: StaticTokenSource{"wxapp": "secret-token"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.TraceWaybill(ctx, "wxapp", sampleTrace())
	wantNotSent(t, err, true)
	if !errors.Is(err, context.DeadlineExceeded) || ClassOf(err) != ClassTransient {
		t.Errorf("err = %v (class %v), want the deadline, transient", err, ClassOf(err))
	}
}

func TestCancelledContextIsNotSent(t *testing.T) {
	srv := newScripted(t, okTrace)
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "secret-token"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.TraceWaybill(ctx, "wxapp", sampleTrace())
	wantNotSent(t, err, true)
	if !errors.Is(err, context.Canceled) || ClassOf(err) != ClassTransient {
		t.Errorf("err = %v (class %v), want canceled, transient", err, ClassOf(err))
	}
	if n := len(srv.requests()); n != 0 {
		t.Fatalf("%d requests reached the server", n)
	}
}

// failingTokens is a TokenSource that fails as told.
type failingTokens struct{ token, refresh error }

func (f failingTokens) Token(context.Context, string) (string, error) {
	if f.token != nil {
		return "", f.token
	}
	return "tok-1", nil
}

func (f failingTokens) Refresh(context.Context, string, string) (string, error) { return "", f.refresh }

func TestTokenSourceFailureIsNotSent(t *testing.T) {
	srv := newScripted(t, okTrace)
	for name, src := range map[string]TokenSource{
		"unknown appid": StaticTokenSource{},
		"fetch failed":  failingTokens{token: errors.New("secret store unreachable")},
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, srv.URL, src)
			_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
			wantNotSent(t, err, true)
		})
	}
	// The mark adds to the error: the class is what it was.
	c := newTestClient(t, srv.URL, StaticTokenSource{})
	if _, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace()); ClassOf(err) != ClassConfiguration || !errors.Is(err, ErrUnknownAppID) {
		t.Errorf("err = %v (class %v), want ErrUnknownAppID, configuration", err, ClassOf(err))
	}
	if n := len(srv.requests()); n != 0 {
		t.Fatalf("%d requests reached the server", n)
	}
}

func TestLocalRejectionIsNotSent(t *testing.T) {
	c := newTestClient(t, closedAddr(t), StaticTokenSource{"wxapp": "secret-token"})
	if _, err := c.TraceWaybill(context.Background(), "wxapp", nil); !errors.Is(err, ErrNotSent) {
		t.Errorf("nil request: err = %v, want ErrNotSent", err)
	}
	if _, err := c.TraceWaybill(context.Background(), "", sampleTrace()); !errors.Is(err, ErrNotSent) {
		t.Errorf("empty appid: err = %v, want ErrNotSent", err)
	}
}

func TestAnsweredCallIsNotNotSent(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) { return 503, `<html>busy</html>` })
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "secret-token"})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	wantNotSent(t, err, false)
	var we *Error
	if !errors.As(err, &we) || we.HTTPStatus != 503 || we.Class != ClassTransient {
		t.Fatalf("err = %v, want HTTP 503, transient", err)
	}
}

func TestRequestHeldUntilDeadlineIsNotNotSent(t *testing.T) {
	ctx := newSignalDeadline()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices the caller hanging up
		close(ctx.done)             // WeChat has the request; the caller's deadline passes before the answer
		<-r.Context().Done()
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, StaticTokenSource{"wxapp": "secret-token"})
	_, err := c.TraceWaybill(ctx, "wxapp", sampleTrace())
	wantNotSent(t, err, false)
	if !errors.Is(err, context.DeadlineExceeded) || ClassOf(err) != ClassTransient {
		t.Errorf("err = %v (class %v), want the deadline, transient", err, ClassOf(err))
	}
}

func TestRejectedThenRefreshFailedIsNotNotSent(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":40001,"errmsg":"invalid credential"}`
	})
	// The source's own fetch did not go out; WeChat still had this call.
	refreshErr := fmt.Errorf("fetch: %w", errors.Join(ErrNotRefreshable, notSent(errors.New("dial refused"))))
	c := newTestClient(t, srv.URL, failingTokens{refresh: refreshErr})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	wantNotSent(t, err, false)
	if !errors.Is(err, ErrNotRefreshable) || ClassOf(err) != ClassConfiguration {
		t.Errorf("err = %v (class %v), want ErrNotRefreshable, configuration", err, ClassOf(err))
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestRejectedThenRetryUnsentIsNotNotSent(t *testing.T) {
	var srv *httptest.Server
	var n atomic.Int64
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		// Nobody will listen for the retry: its dial fails.
		w.Header().Set("Connection", "close")
		srv.Listener.Close()
		fmt.Fprint(w, `{"errcode":42001,"errmsg":"access_token expired"}`)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, &fixedTokens{})
	_, err := c.TraceWaybill(context.Background(), "wxapp", sampleTrace())
	wantNotSent(t, err, false)
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" || ClassOf(err) != ClassTransient {
		t.Fatalf("err = %v (class %v), want the retry's dial error, transient", err, ClassOf(err))
	}
	if got := n.Load(); got != 1 {
		t.Fatalf("%d requests, want 1", got)
	}
}
