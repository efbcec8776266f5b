package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// maxResponseBytes bounds how much of an answer is read. The largest known
// answer, get_delivery_list with about 1,400 carriers, is under 100 KiB.
const maxResponseBytes = 4 << 20

// envelope is the part every WeChat answer shares.
type envelope struct {
	Errcode int    `json:"errcode"`
	Errmsg  string `json:"errmsg"`
}

// decodeResponse turns one HTTP answer into out or an error. It is tolerant of
// unknown fields; an answer that is not JSON is a (transient) decode error.
// It never panics, whatever body holds.
func decodeResponse(endpoint string, status int, body []byte, out any, classify func(int) Class) error {
	var env envelope
	if status != http.StatusOK {
		_ = json.Unmarshal(body, &env) // best effort: some gateways answer with a WeChat body
		msg := env.Errmsg
		if msg == "" {
			msg = http.StatusText(status)
		}
		return &Error{Endpoint: endpoint, Code: env.Errcode, Msg: msg, HTTPStatus: status,
			Class: httpClass(status, env.Errcode, classify)}
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("wechat %s: decode response: %w", endpoint, err)
	}
	if env.Errcode != 0 {
		return &Error{Endpoint: endpoint, Code: env.Errcode, Msg: env.Errmsg, Class: classify(env.Errcode)}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("wechat %s: decode response: %w", endpoint, err)
		}
	}
	return nil
}

// httpClass classifies an answer whose status was not 200. Server trouble is
// transient whatever the body says; an errcode is trusted next; any other
// status (404 from a wrong BaseURL, 403 from a proxy) needs an operator.
func httpClass(status, code int, classify func(int) Class) Class {
	switch {
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return ClassTransient
	case code != 0:
		return classify(code)
	default:
		return ClassConfiguration
	}
}

// wire is the HTTP plumbing shared by Client and the token sources.
type wire struct {
	base     string // no trailing slash
	hc       *http.Client
	classify func(int) Class
	onCall   func(CallInfo) // nil: none
	tracer   trace.Tracer   // never nil: a no-op unless a provider was set
}

// tracerName names the client's spans' instrumentation scope.
const tracerName = "github.com/waybillkit/waybill/wechat"

// CallInfo describes one HTTP request to WeChat, for metrics and tracing
// hooks (Config.OnCall and the token sources' OnCall). It holds no token,
// secret or request body.
type CallInfo struct {
	// Endpoint is the call's name: "trace_waybill", "stable_token",
	// "token", "api_component_token", "api_authorizer_token", ...
	Endpoint string
	// AppID is the appid the call acts for: the merchant's, or the
	// platform's for api_component_token.
	AppID string
	// Duration is from sending the request to reading the answer.
	Duration time.Duration
	// Errcode is WeChat's errcode; 0 on success and for errors without
	// one (network, HTTP status without a WeChat body).
	Errcode int
	// HTTPStatus is the answer's status; 0 when there was no answer.
	HTTPStatus int
	// Class is the error's class; 0 (ClassOf(nil)) on success.
	Class Class
	// Err is the call's error, nil on success.
	Err error
}

// clientKind is the span kind as a start option, made once.
var clientKind = trace.WithSpanKind(trace.SpanKindClient)

// spanNames are the client spans' names, built once per endpoint.
var spanNames sync.Map // endpoint → "wechat <endpoint>"

func (r *request) spanName() string {
	if n, ok := spanNames.Load(r.endpoint); ok {
		return n.(string)
	}
	n, _ := spanNames.LoadOrStore(r.endpoint, "wechat "+r.endpoint)
	return n.(string)
}

// request is one call on the wire.
type request struct {
	appid    string // acted for, for CallInfo
	method   string // GET or POST
	endpoint string // name used in errors, e.g. "trace_waybill"
	path     string // e.g. "/cgi-bin/stable_token"
	query    url.Values
	body     []byte   // POST only
	secrets  []string // values scrubbed from errmsg besides the query's
}

// do sends r and decodes the answer into out. Neither the query (which may hold
// an access_token or a secret) nor r.secrets ever appear in the returned error.
// The error is marked ErrNotSent when r certainly did not reach WeChat.
//
// Each request has a client span, "wechat <endpoint>", whose attributes name
// the endpoint, the appid, the path (never the query, which holds the
// access_token) and the answer; its context travels in the traceparent
// header.
func (w *wire) do(ctx context.Context, r *request, out any) error {
	ctx, span := w.tracer.Start(ctx, r.spanName(), clientKind)
	defer span.End()
	recording := span.IsRecording()
	if recording {
		span.SetAttributes(attribute.String("wechat.endpoint", r.endpoint), attribute.String("wechat.appid", r.appid),
			attribute.String("http.request.method", r.method), attribute.String("url.path", r.path))
	}
	start := time.Now()
	err := w.send(ctx, r, out)
	info := CallInfo{Endpoint: r.endpoint, AppID: r.appid, Duration: time.Since(start), Err: err}
	if err != nil {
		info.Class = ClassOf(err)
		var we *Error
		if errors.As(err, &we) {
			info.Errcode, info.HTTPStatus = we.Code, we.HTTPStatus
		}
		if recording {
			// The error is scrubbed of the query and the request's secrets.
			span.SetStatus(codes.Error, err.Error())
			span.SetAttributes(attribute.Int("wechat.errcode", info.Errcode), attribute.String("wechat.class", info.Class.String()))
		}
	} else {
		info.HTTPStatus = http.StatusOK
	}
	if recording && info.HTTPStatus != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", info.HTTPStatus))
	}
	if w.onCall != nil {
		w.onCall(info)
	}
	return err
}

func (w *wire) send(ctx context.Context, r *request, out any) error {
	if err := ctx.Err(); err != nil {
		// Checked here because net/http may fail a done context before it
		// reports GetConn, which would leave the error unmarked.
		return notSent(fmt.Errorf("wechat %s: %w", r.endpoint, err))
	}
	// Connection events decide ErrNotSent, not the error's text or type: a
	// request without a connection cannot have been written. Once there is
	// one, it may have been (HTTP/2 writes on its own goroutine, even after
	// RoundTrip returned for a cancelled context), so WroteRequest not having
	// fired yet proves nothing. GetConn tells that the transport reports
	// these events at all.
	var asked, connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn: func(string) { asked.Store(true) },
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	})
	u := w.base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var body io.Reader
	if r.method == http.MethodPost {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return notSent(fmt.Errorf("wechat %s: %w", r.endpoint, redactURLError(err)))
	}
	req.Header.Set("Accept", "application/json")
	// traceparent only: tracestate may carry other vendors' data, which is
	// none of WeChat's business.
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		carried := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carried)
		req.Header.Set("traceparent", carried.Get("traceparent"))
	}
	if r.method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		err = fmt.Errorf("wechat %s: %w", r.endpoint, redactURLError(err))
		if asked.Load() && !connected.Load() {
			return notSent(err)
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("wechat %s: read response: %w", r.endpoint, err)
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("wechat %s: response larger than %d bytes", r.endpoint, maxResponseBytes)
	}
	err = decodeResponse(r.endpoint, resp.StatusCode, data, out, w.classify)
	var we *Error
	if errors.As(err, &we) {
		we.Msg = scrub(we.Msg, r)
	}
	return err
}

// scrub removes every secret of r from s, in case WeChat echoes one.
func scrub(s string, r *request) string {
	for _, vs := range r.query {
		for _, v := range vs {
			s = scrubOne(s, v)
		}
	}
	for _, v := range r.secrets {
		s = scrubOne(s, v)
	}
	return s
}

func scrubOne(s, secret string) string {
	if len(secret) < 6 { // short values (grant_type, flags) are not secrets
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}

// redactURLError drops the query (access_token, secret) from the URL that
// net/http puts in its errors, keeping the error chain intact for errors.Is/As.
func redactURLError(err error) error {
	ue, ok := err.(*url.Error) // net/http returns it unwrapped
	if !ok {
		return err
	}
	u := ue.URL
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i] + "?[redacted]"
	}
	return &url.Error{Op: ue.Op, URL: u, Err: ue.Err}
}
