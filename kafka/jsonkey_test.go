package kafka

import (
	"encoding/json"
	"testing"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
)

func TestTopLevelString(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{`{"order_id":"A-1"}`, "A-1", true},
		{` { "x" : {"order_id":"nested"}, "order_id" : "A-2" } `, "A-2", true},
		{`{"goods":[{"order_id":"n"},"]}"],"n":-1.5e3,"t":true,"z":null,"order_id":"A-3"}`, "A-3", true},
		{`{"ORDER_ID":"A-4"}`, "A-4", true},                  // encoding/json folds case
		{`{"order_id":"A-5","order_id":"A-6"}`, "A-6", true}, // the last wins
		{`{"s":"a \"order_id\": \"no\"","order_id":"A-7"}`, "A-7", true},
		{`{"order_id":"\u0041"}`, "", false}, // an escape: ask encoding/json
		{`{"order\u005fid":"A"}`, "", false},
		{`{"order_id":7}`, "", false},
		{`{"x":1}`, "", false},
		{`{}`, "", false},
		{`[]`, "", false},
		{`{"order_id":"A`, "", false},
		{"{\"order_id\":\"\xff\"}", "", false},
		{`{"ordér":"x","order_id":"y"}`, "", false}, // a non-ASCII key: encoding/json folds some into ASCII
	} {
		got, ok := topLevelString([]byte(tc.in), "order_id")
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

func TestOrderIDKey(t *testing.T) {
	rec := func(key, value string) *sarama.ConsumerMessage {
		return &sarama.ConsumerMessage{Key: []byte(key), Value: []byte(value), Offset: 7}
	}
	assert.Equal(t, "A-1", OrderIDKey(rec("other", `{"order_id":"A-1"}`)))
	assert.Equal(t, "A", OrderIDKey(rec("other", `{"order_id":"\u0041"}`)), "escapes through encoding/json")
	assert.Equal(t, "k", OrderIDKey(rec("k", `not json`)), "the record key when there is no order id")
	assert.Equal(t, "k", OrderIDKey(rec("k", `{"order_id":""}`)))
	assert.Equal(t, offsetKey(7), OrderIDKey(rec("", `{}`)), "nor a key: a key of its own")
	assert.NotEqual(t, RecordKey(rec("", "")), RecordKey(&sarama.ConsumerMessage{Offset: 8}))
}

// FuzzTopLevelString: whenever the scanner answers, encoding/json agrees.
func FuzzTopLevelString(f *testing.F) {
	for _, s := range []string{`{"order_id":"A-1"}`, `{"a":[1,{"b":"}"}],"order_id":"x"}`, `{"Order_Id":"y","order_id":"z"}`, `{"order_id":"a","b":}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := topLevelString(data, "order_id")
		if !ok {
			return
		}
		var v struct {
			OrderID *string `json:"order_id"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return // invalid JSON: the handler dead-letters it, whatever its key
		}
		if v.OrderID == nil || *v.OrderID != got {
			t.Fatalf("%q: scanner %q, encoding/json %v", data, got, v.OrderID)
		}
	})
}
