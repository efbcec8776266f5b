package wechat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
)

func TestDefaultClassifyCodeByCode(t *testing.T) {
	want := map[int]Class{
		-1:      ClassTransient,
		40001:   ClassToken,
		40014:   ClassToken,
		42001:   ClassToken,
		45011:   ClassMinuteRate,
		45009:   ClassDailyQuota,
		931023:  ClassNotYet,
		9300559: ClassNotYet,
		40003:   ClassPermanent,
		47001:   ClassPermanent,
		9300507: ClassPermanent,
		48001:   ClassConfiguration,
		48004:   ClassConfiguration,
		61007:   ClassConfiguration,
		40164:   ClassConfiguration,
		61004:   ClassConfiguration,
		61023:   ClassConfiguration,
		61006:   ClassConfiguration,
		40013:   ClassConfiguration,
		40125:   ClassConfiguration,
		40243:   ClassConfiguration,
		// Unknown codes are permanent for the request, never retried forever.
		1:      ClassPermanent,
		933001: ClassPermanent,
		99999:  ClassPermanent,
	}
	for code, class := range want {
		if got := DefaultClassify(code); got != class {
			t.Errorf("DefaultClassify(%d) = %v, want %v", code, got, class)
		}
	}
	// Every entry of the table is covered above, so the table cannot grow untested.
	for code := range classTable {
		if _, ok := want[code]; !ok {
			t.Errorf("errcode %d is in the table but not in this test", code)
		}
	}
}

func TestClassifyOverride(t *testing.T) {
	srv := newScripted(t, func(int64, recordedRequest) (int, any) {
		return 200, `{"errcode":9300501,"errmsg":"not yet"}`
	})
	c, err := NewClient(Config{BaseURL: srv.URL, Tokens: StaticTokenSource{"wx": "t"},
		Classify: func(code int) Class {
			if code == 9300501 {
				return ClassNotYet
			}
			return DefaultClassify(code)
		}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.TraceWaybill(context.Background(), "wx", sampleTrace())
	if ClassOf(err) != ClassNotYet {
		t.Fatalf("class %v, want not_yet from the override", ClassOf(err))
	}
}

func TestClassString(t *testing.T) {
	want := map[Class]string{
		0: "none", ClassTransient: "transient", ClassToken: "token", ClassMinuteRate: "minute_rate",
		ClassDailyQuota: "daily_quota", ClassNotYet: "not_yet", ClassPermanent: "permanent",
		ClassConfiguration: "configuration", 99: "Class(99)",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), c.String(), s)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	cases := map[string]*Error{
		"wechat trace_waybill: errcode 40003: invalid openid (permanent)": {
			Endpoint: "trace_waybill", Code: 40003, Msg: "invalid openid", Class: ClassPermanent},
		"wechat query_trace: HTTP 502: Bad Gateway (transient)": {
			Endpoint: "query_trace", Msg: "Bad Gateway", HTTPStatus: 502, Class: ClassTransient},
		"wechat token: HTTP 403: errcode 40164: invalid ip (configuration)": {
			Endpoint: "token", Code: 40164, Msg: "invalid ip", HTTPStatus: 403, Class: ClassConfiguration},
	}
	for want, e := range cases {
		if e.Error() != want {
			t.Errorf("got %q, want %q", e.Error(), want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassOf(t *testing.T) {
	wrapped := fmt.Errorf("handler: %w", &Error{Code: 45011, Class: ClassMinuteRate})
	cases := []struct {
		err  error
		want Class
	}{
		{nil, 0},
		{wrapped, ClassMinuteRate},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, ClassTransient},
		{timeoutErr{}, ClassTransient},
		{io.ErrUnexpectedEOF, ClassTransient},
		{fmt.Errorf("post: %w", context.DeadlineExceeded), ClassTransient},
		{errors.New("something local and unknown"), ClassTransient},
		{fmt.Errorf("x: %w", ErrNotRefreshable), ClassConfiguration},
		{fmt.Errorf("x: %w", ErrNoVerifyTicket), ClassConfiguration},
		{fmt.Errorf("x: %w", ErrNoRefreshToken), ClassConfiguration},
		{fmt.Errorf("x: %w", ErrUnknownAppID), ClassConfiguration},
	}
	for _, tc := range cases {
		if got := ClassOf(tc.err); got != tc.want {
			t.Errorf("ClassOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
