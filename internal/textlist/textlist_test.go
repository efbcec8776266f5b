package textlist

import (
	"slices"
	"testing"
)

func TestSplit(t *testing.T) {
	for in, want := range map[string][]string{
		"a, b,,c ": {"a", "b", "c"}, "": nil, " , ": nil, "one": {"one"},
		// Broker lists, as KAFKA_BROKERS and scripts/kafka.sh give them.
		"127.0.0.1:9092": {"127.0.0.1:9092"}, " 127.0.0.1:1, ,127.0.0.1:2 ": {"127.0.0.1:1", "127.0.0.1:2"},
	} {
		if got := Split(in, ","); !slices.Equal(got, want) {
			t.Errorf("Split(%q) = %q, want %q", in, got, want)
		}
	}
}
