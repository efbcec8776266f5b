package tracestore

import "strings"

// Key identifies one waybill trace: WeChat keeps one token per (appid,
// waybill_id); trans_id separates two orders shipped on one waybill.
type Key struct{ AppID, WaybillID, TransID string }

// keyEscaper makes ':' free to separate the parts of a Key string; '%' is
// escaped too so that the escaping itself cannot be forged.
var keyEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// String is "appid:waybill_id:trans_id" with '%' and ':' in each part
// percent-escaped, so two different keys never share a string. Shared stores
// use it in their keys, so it never changes.
func (k Key) String() string {
	return keyEscaper.Replace(k.AppID) + ":" + keyEscaper.Replace(k.WaybillID) + ":" + keyEscaper.Replace(k.TransID)
}
