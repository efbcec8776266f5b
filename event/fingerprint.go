package event

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// GoodsFingerprint is a stable hash of the goods list as the buyer sees it:
// name, image URL and description of each line, in order. It is the first 32
// hex digits of a SHA-256 over the length-prefixed fields, so no two lists
// share a fingerprint by shifting text between fields. Shared stores keep it,
// so its definition never changes.
func GoodsFingerprint(goods []Goods) string {
	h := sha256.New()
	var buf []byte
	for _, g := range goods {
		for _, f := range [...]string{g.Name, g.ImageURL, g.Description} {
			buf = strconv.AppendInt(buf[:0], int64(len(f)), 10)
			buf = append(buf, ':')
			buf = append(buf, f...)
			h.Write(buf)
		}
	}
	// The first 16 bytes, encoded alone: slicing 32 characters off the whole
	// encoding would keep all 64 alive in every trace-store record.
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}
