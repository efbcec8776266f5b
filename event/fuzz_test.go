package event_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/rawjson"
	"github.com/waybillkit/waybill/internal/testevent"
)

// FuzzDecodeJSON: no input makes decoding or validation panic, and every
// event that validates converts to a trace request carrying its fields.
func FuzzDecodeJSON(f *testing.F) {
	f.Add(testevent.JSON(f, func(*event.OrderShipped) {}))
	f.Add([]byte(`{"version":1,"goods":[{"name":"茶","image_url":"x","description":"\u003c\u003e\u0026"}]}`))
	f.Add([]byte(`{"goods":null,"shipped_at":"not a time"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, payload []byte) {
		ev, err := event.DecodeJSON(message.NewMessage("m", payload))
		if err != nil {
			return
		}
		if ev.Validate() != nil {
			return
		}
		req := ev.TraceRequest()
		if req.OpenID != ev.OpenID || req.WaybillID != ev.WaybillID || len(req.GoodsInfo.DetailList) != len(ev.Goods) {
			t.Fatalf("trace request lost fields: %+v from %+v", req, ev)
		}
		if _, err := rawjson.Marshal(req); err != nil {
			t.Fatalf("a valid event must encode: %v", err)
		}
	})
}
