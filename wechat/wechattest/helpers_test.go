package wechattest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

const (
	appID     = "wx0123456789abcdef"
	appSecret = "s3cret"
	openID    = "ovtZW4yB7DIj3CxOb6ii-nk4HhFo"
	openMsg   = "/cgi-bin/express/delivery/open_msg/"
)

// newClock is a controllable Config.Now.
func newClock(t time.Time) *testclock.Clock { return testclock.New(t) }

// newServer starts a sandbox with appID registered and closes it after the test.
func newServer(t *testing.T, cfg wechattest.Config) *wechattest.Server {
	t.Helper()
	srv := wechattest.NewServer(cfg)
	t.Cleanup(srv.Close)
	srv.AddApp(appID, appSecret)
	return srv
}

// answer is a decoded JSON answer.
type answer map[string]any

func (a answer) errcode() int {
	n, _ := a["errcode"].(float64)
	return int(n)
}

func (a answer) str(key string) string {
	s, _ := a[key].(string)
	return s
}

// do sends a request and decodes a JSON answer, failing the test on a
// transport error, a non-200 status or a body that is not JSON.
func do(t *testing.T, method, rawURL, contentType string, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d %s", method, rawURL, resp.StatusCode, raw)
	}
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %v: %s", method, rawURL, err, raw)
	}
	return a
}

// postJSON posts body as application/json to path with the query q.
func postJSON(t *testing.T, srv *wechattest.Server, path string, q url.Values, body string) answer {
	t.Helper()
	return do(t, http.MethodPost, srv.URL+path+"?"+q.Encode(), "application/json", []byte(body))
}

// call posts body to open_msg endpoint name with token.
func call(t *testing.T, srv *wechattest.Server, token, name, body string) answer {
	t.Helper()
	return postJSON(t, srv, openMsg+name, url.Values{"access_token": {token}}, body)
}

// stableToken fetches an access_token from cgi-bin/stable_token.
func stableToken(t *testing.T, srv *wechattest.Server, appid, secret string, force bool) answer {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force})
	return postJSON(t, srv, "/cgi-bin/stable_token", nil, string(body))
}

// token returns a valid access_token for appID.
func token(t *testing.T, srv *wechattest.Server) string {
	t.Helper()
	a := stableToken(t, srv, appID, appSecret, false)
	tok := a.str("access_token")
	if tok == "" {
		t.Fatalf("stable_token: no access_token in %v", a)
	}
	return tok
}

// traceBody is a valid trace_waybill body for waybillID.
func traceBody(waybillID string) string {
	return `{"openid":"` + openID + `","waybill_id":"` + waybillID + `","receiver_phone":"13800138000","delivery_id":"YD","trans_id":"4200001234202611260000000001","goods_info":{"detail_list":[{"goods_name":"测试名字","goods_img_url":"https://img.example.com/1.jpg"}]}}`
}

// mustOK fails the test unless a is a success answer.
func mustOK(t *testing.T, a answer) answer {
	t.Helper()
	if a.errcode() != 0 {
		t.Fatalf("errcode %d errmsg %q, want 0", a.errcode(), a.str("errmsg"))
	}
	return a
}

// wantErr fails the test unless a is the in-band error code with WeChat's text.
func wantErr(t *testing.T, a answer, code int) {
	t.Helper()
	if a.errcode() != code {
		t.Fatalf("errcode %d (%q), want %d", a.errcode(), a.str("errmsg"), code)
	}
	if a.str("errmsg") == "" {
		t.Fatalf("errcode %d without errmsg", code)
	}
}
