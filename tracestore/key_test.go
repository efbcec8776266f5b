package tracestore_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/waybillkit/waybill/tracestore"
)

func TestKeyString(t *testing.T) {
	cases := []struct {
		key  tracestore.Key
		want string
	}{
		{tracestore.Key{AppID: "wx0001", WaybillID: "SF1001", TransID: "4200001"}, "wx0001:SF1001:4200001"},
		{tracestore.Key{AppID: "wx0001", WaybillID: "SF1001"}, "wx0001:SF1001:"},
		{tracestore.Key{AppID: "a:b", WaybillID: "c"}, "a%3Ab:c:"},
		{tracestore.Key{AppID: "a", WaybillID: "b:c"}, "a:b%3Ac:"},
		{tracestore.Key{AppID: "a%3Ab", WaybillID: "c"}, "a%253Ab:c:"},
		{tracestore.Key{TransID: "4200:1%"}, "::4200%3A1%25"},
		{tracestore.Key{}, "::"},
	}
	seen := map[string]tracestore.Key{}
	for _, c := range cases {
		got := c.key.String()
		assert.Equal(t, c.want, got, "%#v", c.key)
		assert.Equal(t, 2, strings.Count(got, ":"), "separators in %q", got)
		if prev, dup := seen[got]; dup {
			t.Errorf("%#v and %#v share %q", prev, c.key, got)
		}
		seen[got] = c.key
	}
}

func FuzzKeyString(f *testing.F) {
	f.Add("a:b", "c", "", "a", "b:c", "")
	f.Add("%", "3A", "", "%3A", "", "")
	f.Fuzz(func(t *testing.T, a1, w1, t1, a2, w2, t2 string) {
		k1 := tracestore.Key{AppID: a1, WaybillID: w1, TransID: t1}
		k2 := tracestore.Key{AppID: a2, WaybillID: w2, TransID: t2}
		if k1 != k2 && k1.String() == k2.String() {
			t.Fatalf("%#v and %#v share %q", k1, k2, k1.String())
		}
	})
}
