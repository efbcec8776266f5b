package tracestore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/tracestore"
)

// A duplicate order.shipped finds the token of the first trace, and a changed
// goods list shows as a different fingerprint.
func ExampleMemory() {
	ctx := context.Background()
	store := tracestore.NewMemory(tracestore.MemoryConfig{MaxEntries: 10_000})

	key := tracestore.Key{AppID: "wx1234567890abcdef", WaybillID: "SF1234567890", TransID: "4200001234"}
	goods := []event.Goods{{Name: "咖啡豆", ImageURL: "https://img.example.com/beans.jpg", Description: "500g"}}
	fmt.Println("key:", key)

	// The first delivery: nothing stored, so it claims the key, calls
	// trace_waybill, and remembers the token.
	_, found, _ := store.Get(ctx, key)
	fmt.Println("stored before the first trace:", found)
	release, won, _ := store.Claim(ctx, key, "", time.Minute)
	fmt.Println("first delivery claims:", won)
	_, again, _ := store.Claim(ctx, key, "", time.Minute)
	fmt.Println("a concurrent duplicate claims:", again)
	_ = store.Put(ctx, key, tracestore.Record{
		WaybillToken: "MLHRcUUzVjx0aP4eFtnOD9gD9Sv0XLr1UMcMHTC-HOs", // from trace_waybill
		GoodsHash:    event.GoodsFingerprint(goods),
		TracedAt:     time.Date(2026, 3, 1, 8, 30, 0, 0, time.UTC),
	})
	release()

	// A redelivery reuses the token without calling WeChat.
	rec, found, _ := store.Get(ctx, key)
	fmt.Println("redelivery finds:", found, rec.WaybillToken)

	// The merchant edits the order: update_waybill_goods, not a new trace.
	edited := append(goods, event.Goods{Name: "滤纸", ImageURL: "https://img.example.com/filters.jpg"})
	fmt.Println("goods unchanged:", rec.GoodsHash == event.GoodsFingerprint(goods))
	fmt.Println("goods edited changes the fingerprint:", rec.GoodsHash != event.GoodsFingerprint(edited))
	// Output:
	// key: wx1234567890abcdef:SF1234567890:4200001234
	// stored before the first trace: false
	// first delivery claims: true
	// a concurrent duplicate claims: false
	// redelivery finds: true MLHRcUUzVjx0aP4eFtnOD9gD9Sv0XLr1UMcMHTC-HOs
	// goods unchanged: true
	// goods edited changes the fingerprint: true
}

// Parts of a key are escaped, so a ':' inside one cannot pass for a separator.
func ExampleKey_String() {
	fmt.Println(tracestore.Key{AppID: "wx1", WaybillID: "SF1", TransID: "420"})
	fmt.Println(tracestore.Key{AppID: "wx1", WaybillID: "SF1"})
	fmt.Println(tracestore.Key{AppID: "wx1", WaybillID: "a:b"})
	// Output:
	// wx1:SF1:420
	// wx1:SF1:
	// wx1:a%3Ab:
}
