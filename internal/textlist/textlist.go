// Package textlist splits a separated list, as flags, environment variables
// and test fixtures write them. cmd/waybill and the test rigs import it.
package textlist

import "strings"

// Split splits s at sep, trims each item and drops the blank ones, so
// "a, b,,c " is [a b c] and "" is nil.
func Split(s, sep string) []string {
	var out []string
	for _, v := range strings.Split(s, sep) {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
