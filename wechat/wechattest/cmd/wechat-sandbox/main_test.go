package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is an io.Writer safe for the server's goroutines and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var urlRE = regexp.MustCompile(`http://127\.0\.0\.1:\d+`)

// start runs the command with args and returns its URL and output.
func start(t *testing.T, args ...string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), out, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !urlRE.MatchString(out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no URL printed: %q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	return urlRE.FindString(out.String()), out
}

func post(t *testing.T, url, body string) map[string]any {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestServesWithAutoRegister(t *testing.T) {
	base, out := start(t, "-v", "-unknown", "wxany:W9", "-trace", "wxany:W1:1,4")
	tok := post(t, base+"/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"wxany","secret":"whatever"}`)["access_token"].(string)
	body := `{"openid":"o","waybill_id":"W1","receiver_phone":"1","goods_info":{"detail_list":[{"goods_name":"书","goods_img_url":"u"}]}}`
	wt := post(t, base+"/cgi-bin/express/delivery/open_msg/trace_waybill?access_token="+tok, body)["waybill_token"].(string)
	post(t, base+"/cgi-bin/express/delivery/open_msg/query_trace?access_token="+tok, `{"waybill_token":"`+wt+`"}`)
	q := post(t, base+"/cgi-bin/express/delivery/open_msg/query_trace?access_token="+tok, `{"waybill_token":"`+wt+`"}`)
	if st := q["waybill_info"].(map[string]any)["status"]; st != 4.0 {
		t.Fatalf("second query status %v, want 4", st)
	}
	unk := post(t, base+"/cgi-bin/express/delivery/open_msg/trace_waybill?access_token="+tok, strings.Replace(body, "W1", "W9", 1))
	if unk["errcode"] != 931023.0 {
		t.Fatalf("-unknown waybill answered %v", unk)
	}
	if !strings.Contains(out.String(), "trace_waybill appid=wxany http=200 errcode=931023") {
		t.Fatalf("-v output lacks the call line: %q", out.String())
	}
}

func TestRegisteredAppsAndFaults(t *testing.T) {
	base, _ := start(t, "-app", "wxa:sa", "-fault", "endpoint=get_delivery_list,errcode=-1,times=1")
	if m := post(t, base+"/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"wxb","secret":"x"}`); m["errcode"] != 40013.0 {
		t.Fatalf("unregistered app answered %v", m)
	}
	tok := post(t, base+"/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"wxa","secret":"sa"}`)["access_token"].(string)
	u := base + "/cgi-bin/express/delivery/open_msg/get_delivery_list?access_token=" + tok
	if m := post(t, u, `{}`); m["errcode"] != -1.0 {
		t.Fatalf("fault not played: %v", m)
	}
	if m := post(t, u, `{}`); m["errcode"] != 0.0 {
		t.Fatalf("after the fault: %v", m)
	}
}

func TestRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-addr", "0.0.0.0:8399"},
		{"-addr", "192.168.1.2:80"},
		{"-addr", "127.0.0.1:0", "-app", "no-colon"},
		{"-addr", "127.0.0.1:0", "-fault", "errcode=x"},
		{"-addr", "127.0.0.1:0", "-fault", "rate=2"},
		{"-addr", "127.0.0.1:0", "-authorizer", "wxc:wxm:r"},
		{"-addr", "127.0.0.1:0", "-trace", "wxa:W1:1,x"},
		{"-addr", "127.0.0.1:0", "-quota-tz", "Mars/Olympus"},
		{"-addr", "127.0.0.1:0", "-minute-limit", "-1"},
	} {
		if err := run(context.Background(), args, &syncBuffer{}, &syncBuffer{}); err == nil {
			t.Errorf("run(%q) = nil, want an error", args)
		}
	}
}
