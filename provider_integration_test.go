package waybill

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat/redisstore"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationProviderMode runs two service processes as one
// third-party platform, sharing Redis, against the sandbox: two merchants
// by authorization (one refresh token from the config file, one handed to
// the provider endpoint) and one by app secret on cgi-bin/token. Process A
// takes the ticket on its endpoint; B has no ticket source and uses what A
// stored. Both wait for the ticket before consuming. The tokens live 30 s,
// so the second wave of events needs every token again: each refresh token
// is rotated once per wave, by one process for both, and the old one dies
// 2 s after, so a process that used a stale refresh token would meet 61023.
func TestIntegrationProviderMode(t *testing.T) {
	t.Parallel() // its own topics, groups, sandbox and processes
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "provider.in")
	traced, dead := in+".traced", in+".dead"
	for _, topic := range []string{in, traced, dead} {
		testkafka.CreateTopic(t, brokers, topic, 6)
	}
	redisAddr, prefix := testredis.Addr(t), testredis.Prefix(t)
	const ttl = 30 * time.Second
	sandbox := wechattest.NewServer(wechattest.Config{TokenTTL: ttl, RefreshTokenGrace: 2 * time.Second})
	defer sandbox.Close()
	sandbox.AddComponent("wxcomp", "comp-secret", "ticket-1")
	sandbox.AddAuthorizer("wxcomp", "wxauthA", "refresh-a0")
	sandbox.AddAuthorizer("wxcomp", "wxauthB", "refresh-b0")
	sandbox.AddApp("wxshop", "shop-secret")

	dir := t.TempDir()
	files := map[string]string{"component": "comp-secret", "auth": "bearer-secret", "shop": "shop-secret", "refresh-a": "refresh-a0"}
	for name, v := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600))
	}
	conf := filepath.Join(dir, "waybill.yaml")
	require.NoError(t, os.WriteFile(conf, []byte("parking: false\ncomponent-appid: wxcomp\ncomponent-secret-file: "+dir+"/component\n"+
		"merchants:\n"+
		"  - appid: wxshop\n    token: token\n    secret_file: "+dir+"/shop\n"+
		"  - appid: wxauthA\n    token: authorizer\n    refresh_token_file: "+dir+"/refresh-a\n"+
		"  - appid: wxauthB\n    token: authorizer\n"), 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := observe(ctx, t, kafka.Config{Brokers: brokers, ConsumerGroup: in + "-observer"}, traced, dead)
	common := []string{"-config", conf, "-brokers", strings.Join(brokers, ","), "-group", in + "-group",
		"-input-topic", in, "-traced-topic", traced, "-dead-letter-topic", dead, "-wechat-url", sandbox.URL,
		"-redis", redisAddr, "-redis-prefix", prefix}
	bin := buildService(t)
	a := startService(t, bin, "A", append([]string{"-provider-listen", "127.0.0.1:0", "-provider-auth-file", dir + "/auth"}, common...))
	b := startService(t, bin, "B", common)
	endpoint := "http://" + a.waitLogMatch(ctx, t, `provider endpoint listening" addr=(\S+)`)[1]
	a.waitLogged(ctx, t, "waiting for a component_verify_ticket before consuming")
	b.waitLogged(ctx, t, "waiting for a component_verify_ticket before consuming")
	assert.NotContains(t, a.logText(t)+b.logText(t), "waybill running", "nothing consumed without a ticket")

	put := func(path, body string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, endpoint+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer bearer-secret")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNoContent, resp.StatusCode, path)
	}
	put("/component_verify_ticket", "ticket-1")
	put("/authorizers/wxauthB/refresh_token", "refresh-b0")
	a.waitLogged(ctx, t, "waybill running")
	b.waitLogged(ctx, t, "waybill running")

	appids := []string{"wxshop", "wxauthA", "wxauthB"}
	sent := 0
	wave := func() {
		var events []event.OrderShipped
		for range 10 {
			for _, appid := range appids {
				sent++
				ev := testevent.Valid(fmt.Sprintf("prov-%03d", sent), fmt.Sprintf("SFPROV%03d", sent))
				ev.AppID = appid
				events = append(events, *ev)
			}
		}
		order := make([]int, len(events))
		for i := range order {
			order[i] = i
		}
		publishEvents(t, brokers, in, events, order)
		require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == sent || s.dead > 0 }))
		require.Zero(t, out.snapshot().dead, "nothing dead-lettered")
	}
	wave()
	// api_authorizer_token acts for the platform; the merchant is in its body.
	appOf := func(c wechattest.Call) string {
		if c.Endpoint == "api_authorizer_token" {
			return c.Field("authorizer_appid")
		}
		return c.AppID
	}
	fetches := func(endpoint, appid string) int {
		n := 0
		for _, c := range sandbox.CallsTo(endpoint) {
			if appOf(c) == appid {
				n++
			}
		}
		return n
	}
	for _, appid := range []string{"wxauthA", "wxauthB"} {
		assert.Equal(t, 1, fetches("api_authorizer_token", appid), "%s: one authorizer token for both processes", appid)
	}
	assert.Equal(t, 1, fetches("token", "wxshop"), "one cgi-bin/token for both processes")

	// Past every token's life: the second wave fetches each once more, with
	// the refresh token the first fetch rotated in.
	time.Sleep(ttl)
	wave()
	for _, appid := range []string{"wxauthA", "wxauthB"} {
		calls := sandbox.CallsTo("api_authorizer_token")
		var used []string
		for _, c := range calls {
			if appOf(c) == appid {
				used = append(used, c.Field("authorizer_refresh_token"))
				assert.Zero(t, c.Errcode, "%s: api_authorizer_token answered %d", appid, c.Errcode)
			}
		}
		require.Len(t, used, 2, "%s: one fetch a wave", appid)
		assert.NotEqual(t, used[0], used[1], "%s: the second fetch used the rotated refresh token", appid)
		tok, ok, err := redisstore.New(testredis.Client(t), redisstore.Options{Prefix: prefix + "wechat:"}).
			Load(ctx, "authorizer_refresh_token:wxcomp:"+appid)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, sandbox.RefreshToken(appid), tok.Value, "%s: the current refresh token is saved in Redis", appid)
	}
	assert.Equal(t, 2, fetches("token", "wxshop"))
	assert.Equal(t, 0, len(sandbox.CallsTo("stable_token")), "wxshop is on cgi-bin/token")
	for _, c := range sandbox.CallsTo("trace_waybill") {
		require.Zero(t, c.Errcode, "trace_waybill for %s", c.AppID)
	}

	// Both processes did part of the work.
	for _, p := range []*serviceProc{a, b} {
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
	}
	total := 0
	for name, p := range map[string]*serviceProc{"A": a, "B": b} {
		select {
		case <-p.done:
		case <-ctx.Done():
			t.Fatalf("%s did not stop", name)
		}
		require.NoError(t, p.err, name)
		m := regexp.MustCompile(`waybill stopped" traced=(\d+)`).FindStringSubmatch(p.logText(t))
		require.NotNil(t, m, name)
		n, _ := strconv.Atoi(m[1])
		assert.Positive(t, n, "%s traced some", name)
		total += n
		for _, secret := range []string{"comp-secret", "bearer-secret", "shop-secret", "refresh-a0", "ticket-1"} {
			assert.NotContains(t, p.logText(t), secret, "%s logged a secret", name)
		}
	}
	assert.Equal(t, sent, total)
}
