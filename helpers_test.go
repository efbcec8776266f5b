package waybill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat"
)

// Helpers the root package's tests share: a scripted stand-in for WeChat,
// a Handler built for tests, redelivery as watermill-kafka does it, and the
// rig that runs the service binary against the test broker.

// scriptedTracer answers trace_waybill calls from a per-waybill script of
// errors; after the script runs out it succeeds. It stands in for WeChat where
// a test needs exact control over each answer.
type scriptedTracer struct {
	mu     sync.Mutex
	script map[string][]error // waybill_id → answers, in order
	calls  map[string]int
	times  map[string][]time.Time // waybill_id → when each call came, by time.Now
	remain map[string]int64       // appid → what openapi/quota/get reports
	// during, when set, runs inside each trace_waybill call (n counts from
	// 0), outside the lock; an error it returns is the call's answer.
	during func(ctx context.Context, waybill string, n int) error
	// answer, when set, replaces the successful response.
	answer func(appid, waybill string) *wechat.TraceWaybillResponse
}

func newScriptedTracer() *scriptedTracer {
	return &scriptedTracer{script: map[string][]error{}, calls: map[string]int{}, times: map[string][]time.Time{}, remain: map[string]int64{}}
}

func (s *scriptedTracer) On(waybill string, errs ...error) { s.script[waybill] = errs }

func (s *scriptedTracer) TraceWaybill(ctx context.Context, appid string, req *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error) {
	s.mu.Lock()
	n := s.calls[req.WaybillID]
	s.calls[req.WaybillID] = n + 1
	s.times[req.WaybillID] = append(s.times[req.WaybillID], time.Now())
	during, answer := s.during, s.answer
	var scripted error
	if errs := s.script[req.WaybillID]; n < len(errs) {
		scripted = errs[n]
	}
	s.mu.Unlock()
	if during != nil {
		if err := during(ctx, req.WaybillID, n); err != nil {
			return nil, err
		}
	}
	if scripted != nil {
		return nil, scripted
	}
	if answer != nil {
		return answer(appid, req.WaybillID), nil
	}
	return &wechat.TraceWaybillResponse{WaybillToken: "tok-" + appid + "-" + req.WaybillID}, nil
}

func (s *scriptedTracer) timesOf(waybill string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times[waybill]...)
}

// UpdateWaybillGoods answers from the script under "update:"+token.
func (s *scriptedTracer) UpdateWaybillGoods(_ context.Context, _ string, req *wechat.UpdateWaybillGoodsRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := "update:" + req.WaybillToken
	n := s.calls[key]
	s.calls[key] = n + 1
	if errs := s.script[key]; n < len(errs) && errs[n] != nil {
		return errs[n]
	}
	return nil
}

// GetQuota reports remain[appid] as trace_waybill's remaining quota.
func (s *scriptedTracer) GetQuota(_ context.Context, appid string, req *wechat.QuotaRequest) (*wechat.QuotaResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["quota:"+appid]++
	if req.CGIPath != wechat.OpenMsgPath("trace_waybill") {
		return nil, fmt.Errorf("quota of %s asked", req.CGIPath)
	}
	return &wechat.QuotaResponse{Quota: wechat.Quota{DailyLimit: 100000, Remain: s.remain[appid]}}, nil
}

func (s *scriptedTracer) callsFor(waybill string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[waybill]
}

// wechatErr is the error *wechat.Client returns for errcode code.
func wechatErr(code int) error {
	return &wechat.Error{Endpoint: "trace_waybill", Code: code, Msg: fmt.Sprintf("code %d", code), Class: wechat.DefaultClassify(code)}
}

// msgOf is ev as a JSON message with a fresh UUID.
func msgOf(t *testing.T, ev any) *message.Message {
	t.Helper()
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return message.NewMessage(watermill.NewUUID(), b)
}

// newTestHandler builds a Handler with instant backoff and waits, the
// breaker off, and mod applied.
func newTestHandler(t *testing.T, tr Tracer, pub message.Publisher, mod func(*Config)) *Handler {
	t.Helper()
	cfg := Config{
		Client: tr, Publisher: pub,
		Backoff: func(int) time.Duration { return time.Millisecond },
		Retry:   RetryPolicy{BreakerWait: time.Millisecond, NotYetDelay: time.Millisecond, QuotaReset: func(now time.Time) time.Time { return now.Add(time.Millisecond) }},
		Breaker: BreakerConfig{Disabled: true},
		// MaxWaitInPlace and ClaimTTL keep their production defaults: a
		// test-only budget once hid a loop of calls.
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	require.NoError(t, err)
	return h
}

// timeoutErr is a net.Error timeout, as a stalled connection gives.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// busy is n answers of errcode -1: WeChat busy, a transient fault.
func busy(n int) []error { return repeatErr(wechatErr(-1), n) }

// repeatErr is n answers of err, for scriptedTracer.On.
func repeatErr(err error, n int) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// redeliver hands msg to h the way watermill-kafka does: after a nack, the
// same record again after NackResendSleep (1 s), until Handle acknowledges
// or max deliveries were made.
func redeliver(h *Handler, msg *message.Message, max int) (int, error) {
	var err error
	for i := 1; i <= max; i++ {
		if err = h.Handle(msg.Copy()); err == nil {
			return i, nil
		}
		time.Sleep(time.Second)
	}
	return max, err
}

// spreadOf is the default QuotaSpread's share for an event parked at
// sinceReset into its window.
func spreadOf(sinceReset time.Duration) time.Duration {
	return time.Duration(float64(sinceReset) / float64(24*time.Hour) * float64(5*time.Minute))
}

// buildService builds cmd/waybill into a temporary directory, with the race
// detector when this test binary has it.
func buildService(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "waybill")
	args := []string{"build", "-o", bin}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", append(args, "./cmd/waybill")...).CombinedOutput()
	require.NoError(t, err, "go build ./cmd/waybill:\n%s", out)
	return bin
}

// serviceProc is a running cmd/waybill.
type serviceProc struct {
	cmd  *exec.Cmd
	log  string // path of its stderr
	done chan struct{}
	err  error // from Wait, once done is closed
}

// startService starts bin with args, logging to a file that the test prints
// if it fails. The process is killed when the test ends, if still running.
func startService(t *testing.T, bin, name string, args []string) *serviceProc {
	t.Helper()
	return startServiceEnv(t, bin, name, args, nil)
}

// startServiceEnv is startService with env added to the process's
// environment.
func startServiceEnv(t *testing.T, bin, name string, args, env []string) *serviceProc {
	t.Helper()
	p := &serviceProc{log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	require.NoError(t, err)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	// Only the flags configure it: no WAYBILL_* variable of this machine.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WAYBILL_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s process log:\n%s", name, p.logText(t))
		}
	})
	return p
}

// waitFor polls cond every 50 ms until it holds. It fails the test when
// ctx ends or the process exits first.
func (p *serviceProc) waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("never: %s", what)
		case <-p.done:
			t.Fatalf("the service exited while waiting for %s: %v", what, p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitLogged waits for text in the process's log.
func (p *serviceProc) waitLogged(ctx context.Context, t *testing.T, text string) {
	t.Helper()
	p.waitFor(ctx, t, "a log line with "+strconv.Quote(text), func() bool { return strings.Contains(p.logText(t), text) })
}

// waitLogMatch waits for a log line matching re and returns its submatches.
func (p *serviceProc) waitLogMatch(ctx context.Context, t *testing.T, re string) []string {
	t.Helper()
	r := regexp.MustCompile(re)
	var m []string
	p.waitFor(ctx, t, "a log line matching "+re, func() bool { m = r.FindStringSubmatch(p.logText(t)); return m != nil })
	return m
}

func (p *serviceProc) logText(t *testing.T) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Errorf("reading %s: %v", p.log, err)
	}
	return string(b)
}

// publishEvents publishes events[i] for each i of order, keyed by order id,
// each with a message UUID of its own.
func publishEvents(t *testing.T, brokers []string, topic string, events []event.OrderShipped, order []int) {
	t.Helper()
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, nil)
	require.NoError(t, err)
	defer pub.Close()
	for _, i := range order {
		b, err := json.Marshal(events[i])
		require.NoError(t, err)
		msg := message.NewMessage(watermill.NewUUID(), b)
		msg.Metadata.Set(deadletter.HeaderKey, events[i].OrderID)
		require.NoError(t, pub.Publish(topic, msg))
	}
}

// seen is what an observer read from the output topics: the waybill tokens
// of each order's waybill.traced copies, and the number of dead letters.
type seen struct {
	tokens map[string][]string
	dead   int
}

// outputs is seen as it grows.
type outputs struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every message
	seen    seen
	err     error
}

// observe reads the traced and dead-letter topics in its own consumer group
// until ctx ends.
func observe(ctx context.Context, t *testing.T, kc kafka.Config, traced, dead string) *outputs {
	t.Helper()
	sub, err := kafka.NewSubscriber(kc, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	tracedCh, err := sub.Subscribe(ctx, traced)
	require.NoError(t, err)
	deadCh, err := sub.Subscribe(ctx, dead)
	require.NoError(t, err)
	o := &outputs{changed: make(chan struct{}), seen: seen{tokens: map[string][]string{}}}
	go func() {
		for {
			select {
			case m, ok := <-tracedCh:
				if !ok {
					return
				}
				var ev event.WaybillTraced
				err := json.Unmarshal(m.Payload, &ev)
				o.update(func() {
					o.err = errors.Join(o.err, err)
					o.seen.tokens[ev.OrderID] = append(o.seen.tokens[ev.OrderID], ev.WaybillToken)
				})
				m.Ack()
			case m, ok := <-deadCh:
				if !ok {
					return
				}
				o.update(func() { o.seen.dead++ })
				m.Ack()
			}
		}
	}()
	return o
}

func (o *outputs) update(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
	close(o.changed)
	o.changed = make(chan struct{})
}

// wait blocks until cond, called under the lock, holds or ctx ends.
func (o *outputs) wait(ctx context.Context, cond func(seen) bool) error {
	for {
		o.mu.Lock()
		ok, changed, err := cond(o.seen), o.changed, o.err
		o.mu.Unlock()
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// snapshot copies what was seen.
func (o *outputs) snapshot() seen {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := seen{tokens: map[string][]string{}, dead: o.seen.dead}
	for k, v := range o.seen.tokens {
		s.tokens[k] = append([]string(nil), v...)
	}
	return s
}
