package wechattest

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// Call is the record of one request the sandbox received.
type Call struct {
	// Endpoint is the last element of the URL path: "trace_waybill",
	// "stable_token", "token", "api_authorizer_token", "get" (for
	// cgi-bin/openapi/quota/get), ...
	Endpoint string
	// Path is the full URL path, e.g. "/cgi-bin/express/delivery/open_msg/trace_waybill".
	Path string
	// Method is the HTTP method.
	Method string
	// AppID is the appid the call acts for: resolved from access_token (or
	// component_access_token), or taken from the request at token endpoints.
	// Empty when it cannot be told, e.g. for an unknown token.
	AppID string
	// Query is the URL query as received, access_token included: this is a
	// test sandbox, its tokens are worthless outside it.
	Query url.Values
	// Header is the request header as received.
	Header http.Header
	// Body is the request body, byte for byte (up to 1 MiB), so that tests
	// can assert raw UTF-8 with no \u escapes.
	Body []byte
	// Errcode is the errcode the sandbox answered with (0 for success and for
	// answers that were not WeChat JSON).
	Errcode int
	// HTTPStatus is the HTTP status answered; 0 while the call is still being
	// served, or when a Fault dropped the connection or the client went away.
	HTTPStatus int
	// Fault reports whether an injected Fault decided the answer.
	Fault bool
	// At is when the request arrived, by Config.Now.
	At time.Time
}

// Field returns the top-level field name of the JSON body: the string for a
// JSON string, the JSON text for any other value (e.g. "true", "{...}"), and ""
// when the field is absent or the body is not a JSON object.
func (c *Call) Field(name string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(c.Body, &m) != nil {
		return ""
	}
	raw, ok := m[name]
	if !ok {
		return ""
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str
	}
	return string(raw)
}

// Calls returns a copy of every call received so far, in arrival order.
func (s *Server) Calls() []Call {
	return s.collect(func(*Call) bool { return true })
}

// CallsTo returns the calls whose Endpoint (last path element, e.g.
// "trace_waybill") or full Path equals endpoint, in arrival order.
func (s *Server) CallsTo(endpoint string) []Call {
	return s.collect(func(c *Call) bool { return c.Endpoint == endpoint || c.Path == endpoint })
}

func (s *Server) collect(keep func(*Call) bool) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Call, 0, len(s.calls))
	for _, c := range s.calls {
		if keep(c) {
			out = append(out, *c)
		}
	}
	return out
}

// Reset forgets the recorded calls and removes every injected Fault. Apps,
// tokens, waybills and quota usage are kept: it prepares a server shared by
// several subtests for the next one.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
	for _, f := range s.faults {
		f.removed = true
	}
	s.faults = nil
}
