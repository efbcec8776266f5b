package event_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/waybillkit/waybill/event"
)

func TestGoodsFingerprint(t *testing.T) {
	goods := []event.Goods{
		{Name: "咖啡豆", ImageURL: "https://img.example.com/1.jpg", Description: "500g"},
		{Name: "滤纸", ImageURL: "https://img.example.com/2.jpg"},
	}
	fp := event.GoodsFingerprint(goods)
	// Stores keep fingerprints across releases: this value must never change.
	// It is SHA-256 over "<byte length>:<field>" for name, image, description
	// of each line, cut to 32 hex digits (computed outside Go).
	assert.Equal(t, "aab50c1bfa782a9bde8356fc3ed2c348", fp)
	assert.Len(t, event.GoodsFingerprint(nil), 32)

	copied := append([]event.Goods(nil), goods...)
	assert.Equal(t, fp, event.GoodsFingerprint(copied), "same list, new slice")

	changed := map[string][]event.Goods{
		"order":               {goods[1], goods[0]},
		"one line dropped":    goods[:1],
		"name":                {{Name: "咖啡粉", ImageURL: goods[0].ImageURL, Description: "500g"}, goods[1]},
		"image":               {{Name: goods[0].Name, ImageURL: "https://img.example.com/3.jpg", Description: "500g"}, goods[1]},
		"description":         {{Name: goods[0].Name, ImageURL: goods[0].ImageURL, Description: "1kg"}, goods[1]},
		"text between lines":  {{Name: goods[0].Name, ImageURL: goods[0].ImageURL, Description: "500g滤纸"}, {ImageURL: goods[1].ImageURL}},
		"text between fields": {{Name: goods[0].Name + "https://img.example.com/1.jpg", Description: "500g"}, goods[1]},
		"empty line added":    append(append([]event.Goods(nil), goods...), event.Goods{}),
	}
	seen := map[string]string{fp: "original"}
	for name, g := range changed {
		got := event.GoodsFingerprint(g)
		if prev, dup := seen[got]; dup {
			t.Errorf("%s has the fingerprint of %s", name, prev)
		}
		seen[got] = name
	}
}
