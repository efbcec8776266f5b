package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/postgres"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// childArgs, when set, makes the test binary the monolith itself, with
// these arguments (JSON): the crash test runs it as a child to kill.
const childArgs = "WAYBILL_MONOLITH_CHILD_ARGS"

func TestMain(m *testing.M) {
	if a := os.Getenv(childArgs); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			panic(err)
		}
		if err := run(args); err != nil {
			os.Stderr.WriteString("monolith: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestDemo runs the program as the README does, on the test's own schema.
func TestDemo(t *testing.T) {
	_, u := testpostgres.Schema(t)
	require.NoError(t, run([]string{"-db", u}))
}

// child is a running monolith process.
type child struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	b, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childArgs+"="+string(b))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "monolith: serving on http://"); ok {
				addr <- strings.Fields(a)[0]
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-c.done })
	select {
	case c.addr = <-addr:
	case <-c.done:
		t.Fatal("the monolith exited before serving")
	case <-time.After(60 * time.Second):
		t.Fatal("the monolith did not start serving")
	}
	return c
}

func (c *child) get(t *testing.T, id string) *Order {
	t.Helper()
	o, err := get(context.Background(), "http://"+c.addr, id)
	require.NoError(t, err)
	return o
}

// TestCrashBetweenCommitAndCall kills the monolith with SIGKILL after an
// order's transaction committed and before WeChat was called (its first
// request to WeChat is held and answered by the kill), then starts it again
// on the same database: the order is traced, with one trace_waybill call in
// all. The row stayed in the input table, locked by the dead process's
// transaction, which PostgreSQL rolled back when its connection dropped;
// the dead process's claim on the waybill expired after ClaimTTL (15 s,
// the default) and the new process took it over.
func TestCrashBetweenCommitAndCall(t *testing.T) {
	_, dbURL := testpostgres.Schema(t)
	db := testpostgres.Open(t, dbURL)
	sandbox := wechattest.NewServer(wechattest.Config{})
	t.Cleanup(sandbox.Close)
	sandbox.AddApp(AppID, AppSecret)
	target, err := url.Parse(sandbox.URL)
	require.NoError(t, err)
	forward := httputil.NewSingleHostReverseProxy(target)
	var holding atomic.Bool
	holding.Store(true)
	reached, killed := make(chan string, 16), make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if holding.Load() {
			reached <- r.URL.Path
			<-killed // never answered: the process dies first
			return
		}
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	var once sync.Once
	release := func() { once.Do(func() { close(killed) }) }
	t.Cleanup(release) // before proxy.Close, which waits for held requests
	args := []string{"-serve", "-db", dbURL, "-wechat", proxy.URL}

	first := startChild(t, args...)
	ev := event.OrderShipped{
		Version: event.SchemaVersion, AppID: AppID, OpenID: "oMono4yB7DIj3CxOb6ii-crash",
		WaybillID: "SF7700000001", DeliveryID: "SF", ReceiverPhone: "13900130001",
		Goods: []event.Goods{{Name: "普洱茶", ImageURL: "https://img.example.cn/puer.jpg"}},
	}
	body, _ := json.Marshal(ev)
	resp, err := http.Post("http://"+first.addr+"/orders/CRASH-1/ship", "application/json", strings.NewReader(string(body)))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "committed")

	select {
	case path := <-reached:
		t.Logf("killing the monolith at its first request to WeChat: %s", path)
	case <-time.After(30 * time.Second):
		t.Fatal("the monolith never reached WeChat")
	}
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	killedAt := time.Now()
	<-first.done
	release()
	assert.Empty(t, sandbox.CallsTo("trace_waybill"), "killed before the call")
	var rows int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+postgres.Table(event.OrderShippedTopic)).Scan(&rows))
	assert.Equal(t, 1, rows, "the event is still in the input table")

	holding.Store(false)
	second := startChild(t, args...)
	deadline := time.Now().Add(90 * time.Second)
	var o *Order
	for o = second.get(t, "CRASH-1"); o.Status == "shipped" && time.Now().Before(deadline); o = second.get(t, "CRASH-1") {
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, "traced", o.Status, "traced after the restart")
	assert.NotEmpty(t, o.WaybillToken)
	calls := sandbox.CallsTo("trace_waybill")
	require.Len(t, calls, 1, "one trace_waybill call in all")
	assert.Equal(t, "SF7700000001", calls[0].Field("waybill_id"))
	// The dead process had claimed the waybill before its first request
	// to WeChat: the new one called only once that claim had lapsed.
	assert.Greater(t, calls[0].At.Sub(killedAt), 10*time.Second, "the call waited for the dead process's claim (ClaimTTL 15 s)")
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+postgres.Table(event.OrderShippedTopic)).Scan(&rows))
	assert.Zero(t, rows, "the input row is gone once handled")
}
