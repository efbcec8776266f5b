package wechattest

import (
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Fault describes a failure the sandbox plays instead of (or before) its
// normal answer. Inject arms it.
type Fault struct {
	// Endpoint is the last path element the fault applies to, e.g.
	// "trace_waybill"; "" means every endpoint.
	Endpoint string
	// Match, if not nil, further selects the calls the fault applies to, e.g.
	// by c.Field("waybill_id"). It is called without the server's lock held
	// and must not modify c.
	Match func(c *Call) bool
	// Errcode, if not zero, is answered as an in-band WeChat error with HTTP
	// 200 (e.g. -1 system busy, 45009, 40001).
	Errcode int
	// Errmsg is the errmsg for Errcode; "" means WeChat's usual text.
	Errmsg string
	// HTTPStatus, if not zero, is answered instead of any WeChat JSON (e.g.
	// 502 or 503 from WeChat's gateway), with a small HTML body.
	HTTPStatus int
	// Latency delays the answer by this much real time. The wait ends early
	// when the client gives up or the server closes, and then nothing is
	// answered. A fault with only Latency delays the normal answer.
	Latency time.Duration
	// Drop closes the connection without answering (after Latency).
	Drop bool
	// Times is how many times the fault fires before it disarms itself; 0
	// means without end.
	Times int
	// Rate is the probability in (0, 1] that a matching call triggers the
	// fault; 0 means always. The draw comes from a source seeded with
	// Config.Seed, so a sequential test sees the same outcome on every run.
	Rate float64
}

// Validate reports whether f can be injected.
func (f Fault) Validate() error {
	switch {
	case f.Rate < 0 || f.Rate > 1:
		return fmt.Errorf("Rate %v is outside [0, 1]", f.Rate)
	case f.Times < 0:
		return fmt.Errorf("Times %d is negative", f.Times)
	case f.Latency < 0:
		return fmt.Errorf("Latency %v is negative", f.Latency)
	case f.HTTPStatus != 0 && (f.HTTPStatus < 100 || f.HTTPStatus > 999):
		return fmt.Errorf("HTTPStatus %d is not an HTTP status", f.HTTPStatus)
	}
	return nil
}

type armedFault struct {
	Fault
	fired   int
	removed bool
}

// Inject arms f and returns a function that disarms it (safe to call more
// than once). When several armed faults match a call, the one injected first
// decides. Inject panics if f is invalid.
func (s *Server) Inject(f Fault) (remove func()) {
	if err := f.Validate(); err != nil {
		panic(fmt.Sprintf("wechattest: invalid Fault: %v", err))
	}
	a := &armedFault{Fault: f}
	s.mu.Lock()
	s.faults = append(s.faults, a)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		a.removed = true
		s.faults = slices.DeleteFunc(s.faults, func(x *armedFault) bool { return x == a })
	}
}

// pickFault returns the fault that fires for c, if any, and counts its firing.
func (s *Server) pickFault(c *Call) *Fault {
	s.mu.Lock()
	candidates := slices.Clone(s.faults)
	view := *c
	s.mu.Unlock()
	for _, a := range candidates {
		if a.Endpoint != "" && a.Endpoint != view.Endpoint {
			continue
		}
		if a.Match != nil && !a.Match(&view) {
			continue
		}
		s.mu.Lock()
		fires := !a.removed && (a.Times == 0 || a.fired < a.Times) &&
			(a.Rate == 0 || s.rng.Float64() < a.Rate)
		if fires {
			a.fired++
			if a.Times != 0 && a.fired >= a.Times {
				a.removed = true
				s.faults = slices.DeleteFunc(s.faults, func(x *armedFault) bool { return x == a })
			}
		}
		s.mu.Unlock()
		if fires {
			f := a.Fault
			return &f
		}
	}
	return nil
}

// applyFault plays f. It reports whether the call has been answered (or
// abandoned); false means the normal answer follows.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, c *Call, f *Fault) bool {
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			s.finish(c, 0, 0, true)
			abort(w)
		case <-s.closing:
			s.finish(c, 0, 0, true)
			abort(w)
		}
	}
	switch {
	case f.Drop:
		s.finish(c, 0, 0, true)
		abort(w)
	case f.HTTPStatus != 0:
		s.finish(c, f.HTTPStatus, 0, true)
		text := http.StatusText(f.HTTPStatus)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.HTTPStatus)
		_, _ = fmt.Fprintf(w, "<html><head><title>%d %s</title></head><body><center><h1>%d %s</h1></center></body></html>\n", f.HTTPStatus, text, f.HTTPStatus, text)
		return true
	case f.Errcode != 0:
		msg := f.Errmsg
		if msg == "" {
			msg = Errmsg(f.Errcode)
		}
		s.finish(c, http.StatusOK, f.Errcode, true)
		writeJSON(w, http.StatusOK, errBody{f.Errcode, msg})
		return true
	}
	return false
}

// abort closes the connection without an answer. It does not return: it
// unwinds the handler with http.ErrAbortHandler, which net/http neither logs
// nor answers.
func abort(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
		}
	}
	panic(http.ErrAbortHandler)
}
