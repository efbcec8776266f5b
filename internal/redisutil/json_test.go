package redisutil_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/redisutil"
	"github.com/waybillkit/waybill/internal/testredis"
)

// GetJSON tells the three outcomes a store acts on apart: no value, a value
// it can read, and one it cannot (which its next SET replaces).
func TestGetJSON(t *testing.T) {
	ctx := context.Background()
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	type value struct {
		Token string `json:"token"`
	}
	cases := []struct {
		name   string
		put    func(key string) error
		wantOK bool
		want   value
		// cause, when set, is a pointer errors.As must fill: the error
		// is then ErrUnreadable wrapped around it; otherwise it is nil.
		cause any
	}{
		{"missing", func(string) error { return nil }, false, value{}, nil},
		{"JSON", func(k string) error { return rdb.Set(ctx, k, `{"token":"tok-1"}`, 0).Err() }, true, value{Token: "tok-1"}, nil},
		{"not JSON", func(k string) error { return rdb.Set(ctx, k, "{half", 0).Err() }, false, value{}, new(*json.SyntaxError)},
		{"JSON of another shape", func(k string) error { return rdb.Set(ctx, k, `{"token":7}`, 0).Err() }, false, value{}, new(*json.UnmarshalTypeError)},
		{"a hash (WRONGTYPE)", func(k string) error { return rdb.HSet(ctx, k, "token", "x").Err() }, false, value{}, new(redis.Error)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := prefix + c.name
			if err := c.put(key); err != nil {
				t.Fatal(err)
			}
			var got value
			ok, err := redisutil.GetJSON(ctx, rdb, key, &got)
			if ok != c.wantOK || (ok && got != c.want) {
				t.Errorf("GetJSON = %v, %+v; want %v, %+v", ok, got, c.wantOK, c.want)
			}
			if c.cause == nil {
				if err != nil {
					t.Errorf("GetJSON error %v, want none", err)
				}
				return
			}
			if !errors.Is(err, redisutil.ErrUnreadable) || !errors.As(err, c.cause) {
				t.Errorf("GetJSON error %v, want ErrUnreadable wrapping a %T", err, c.cause)
			}
		})
	}
}

// A failed GET is the client's error, not ErrUnreadable: the value may be
// fine, so a store must not treat it as missing.
func TestGetJSONConnectionError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	var v struct{}
	ok, err := redisutil.GetJSON(context.Background(), rdb, "k", &v)
	var opErr *net.OpError
	if ok || !errors.As(err, &opErr) || errors.Is(err, redisutil.ErrUnreadable) {
		t.Fatalf("GetJSON = %v, %v; want a *net.OpError that is not ErrUnreadable", ok, err)
	}
}
