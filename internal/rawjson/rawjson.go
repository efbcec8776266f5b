// Package rawjson encodes JSON the way both WeChat and waybill's Kafka
// topics want it. The wechat client and the root package import it.
package rawjson

import (
	"bytes"
	"encoding/json"
)

// Marshal encodes v as raw UTF-8 JSON: Chinese stays readable, <>& stay as
// written (no HTML escaping) and there is no trailing newline, so what is
// sent is what the merchant wrote. A nil v is the empty object.
func Marshal(v any) ([]byte, error) {
	if v == nil {
		return []byte("{}"), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
