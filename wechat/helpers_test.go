package wechat

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
)

// newFakeClock is the clock the tests start from.
func newFakeClock() *testclock.Clock {
	return testclock.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
}

// recordedRequest is what a scripted server saw.
type recordedRequest struct {
	Path, Query, ContentType string
	Body                     []byte
}

// scripted is an httptest server whose answers the test decides per request.
type scripted struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recordedRequest
	n    atomic.Int64
}

func newScripted(t *testing.T, answer func(n int64, r recordedRequest) (status int, body any)) *scripted {
	t.Helper()
	s := &scripted{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec := recordedRequest{Path: r.URL.Path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type"), Body: b}
		s.mu.Lock()
		s.reqs = append(s.reqs, rec)
		s.mu.Unlock()
		status, body := answer(s.n.Add(1), rec)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if raw, ok := body.(string); ok {
			io.WriteString(w, raw)
			return
		}
		json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *scripted) requests() []recordedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recordedRequest(nil), s.reqs...)
}

// fixedTokens is a TokenSource for tests of the client alone: it counts
// refreshes and hands out "tok-1", "tok-2", ... .
type fixedTokens struct {
	mu        sync.Mutex
	gen       int
	refreshes int
}

func (f *fixedTokens) Token(_ context.Context, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == 0 {
		f.gen = 1
	}
	return "tok-" + strconv.Itoa(f.gen), nil
}

func (f *fixedTokens) Refresh(_ context.Context, _ string, stale string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if stale == "tok-"+strconv.Itoa(f.gen) {
		f.gen++
		f.refreshes++
	}
	return "tok-" + strconv.Itoa(f.gen), nil
}

// countDials returns ctx counting, in dialed, the connections its requests
// did not reuse.
func countDials(ctx context.Context) (context.Context, *atomic.Int64) {
	dialed := new(atomic.Int64)
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				dialed.Add(1)
			}
		},
	}), dialed
}
