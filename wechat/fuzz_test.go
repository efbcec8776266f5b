package wechat

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/waybillkit/waybill/internal/rawjson"
)

// FuzzDecodeResponse feeds arbitrary bodies and statuses to the one decoder
// of every answer: it must never panic, and its verdict must agree with the
// body's errcode.
func FuzzDecodeResponse(f *testing.F) {
	seeds := []string{
		`{"errcode":0,"errmsg":"ok","waybill_token":"o_ARWHaxIxzWHmdui-AIw9KBr8qNnbmc08V0KhDyXE-IMLo6AcOqJkPsNLcLzfTb"}`,
		`{"errcode":0,"errmsg":"ok","waybill_info":{"waybill_id":"SF1","status":4},"shop_info":{"goods_info":{"detail_list":[{"goods_name":"茶","goods_img_url":"u"}]}},"delivery_info":{"delivery_id":"SF","delivery_name":"顺丰"}}`,
		`{"errcode":0,"delivery_list":[{"delivery_id":"YD","delivery_name":"韵达速递"}],"count":1}`,
		`{"errcode":0,"quota":{"daily_limit":100000,"used":1,"remain":99999},"rate_limit":{"call_count":100,"refresh_second":60}}`,
		`{"access_token":"at","expires_in":7200}`,
		`{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest"}`,
		`{"errcode":-1,"errmsg":"system error"}`,
		`{"errcode":"45009"}`,
		`{"errcode":1e400}`,
		`{"waybill_info":{"status":"4"}}`,
		`<html>502 Bad Gateway</html>`,
		``, `null`, `[]`, `{`, `{"errcode":0,"count":-1e30}`,
	}
	for _, s := range seeds {
		f.Add(200, []byte(s))
	}
	f.Add(503, []byte(`{"errcode":-1}`))
	f.Add(404, []byte(``))
	outs := func() []any {
		return []any{new(TraceWaybillResponse), new(QueryTraceResponse), new(GetDeliveryListResponse),
			new(QuotaResponse), new(tokenAnswer), nil}
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		for _, out := range outs() {
			err := decodeResponse("fuzz", status, body, out, DefaultClassify)
			var we *Error
			isWe := errors.As(err, &we)
			switch {
			case status != 200:
				if !isWe || we.HTTPStatus != status || we.Class == 0 {
					t.Fatalf("status %d: %v", status, err)
				}
			case err == nil:
				var env envelope
				if json.Unmarshal(body, &env) != nil || env.Errcode != 0 {
					t.Fatalf("accepted %q", body)
				}
			case isWe:
				if we.Code == 0 || we.HTTPStatus != 0 || we.Class != DefaultClassify(we.Code) {
					t.Fatalf("bad *Error %+v for %q", we, body)
				}
			default:
				if ClassOf(err) != ClassTransient {
					t.Fatalf("decode failure classified %v", ClassOf(err))
				}
			}
		}
	})
}

// FuzzEncodeRequest checks the request encoding: what is sent decodes to what
// was given, and valid UTF-8 text (Chinese, <>&) is sent raw, not \u-escaped.
func FuzzEncodeRequest(f *testing.F) {
	f.Add("西湖龙井 <特级> & 礼盒", "https://img.example/a.png?x=1&y=2", "明前茶")
	f.Add("\u2028", "\x00\x7f", "\xff")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, name, img, desc string) {
		in := &TraceWaybillRequest{OpenID: "o", WaybillID: "w",
			GoodsInfo: GoodsInfo{DetailList: []Goods{{GoodsName: name, GoodsImgURL: img, GoodsDesc: desc}}}}
		b, err := rawjson.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasSuffix(b, []byte("\n")) {
			t.Fatal("trailing newline")
		}
		var back TraceWaybillRequest
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for _, s := range []string{name, img, desc} {
			if !utf8.ValidString(s) {
				return // Go replaces invalid bytes with U+FFFD; nothing more to check
			}
			if !printable(s) {
				continue // control characters and U+2028/9 are escaped, as JSON needs
			}
			if !bytes.Contains(b, []byte(s)) {
				t.Fatalf("%q not sent raw in %s", s, b)
			}
		}
		got := back.GoodsInfo.DetailList[0]
		if got.GoodsName != name || got.GoodsImgURL != img || got.GoodsDesc != desc {
			t.Fatalf("round trip changed %+v", got)
		}
	})
}

// printable reports whether s needs no escape in JSON besides none at all.
func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool {
		return r < 0x20 || r == '"' || r == '\\' || r == '\u2028' || r == '\u2029'
	})
}
