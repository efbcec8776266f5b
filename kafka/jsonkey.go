package kafka

import (
	"bytes"
	"unicode/utf8"
)

// topLevelString finds the string value of the top-level field name (ASCII,
// matched case-insensitively, as encoding/json matches struct tags) in a
// JSON object without decoding it: OrderIDKey runs for every record, before
// the handler decodes it in full. ok is false whenever the answer could
// differ from encoding/json's (escapes in a key or in the value, invalid
// UTF-8, a value that is not a string, JSON it cannot follow), for the
// caller to ask encoding/json. As there, the last of duplicate fields wins.
func topLevelString(data []byte, name string) (value string, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return "", false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return "", false
	}
	found := false
	for {
		if i >= len(data) || data[i] != '"' {
			return "", false
		}
		end := bytes.IndexByte(data[i+1:], '"')
		if end < 0 {
			return "", false
		}
		key := data[i+1 : i+1+end]
		if bytes.IndexByte(key, '\\') >= 0 || !isASCII(key) {
			// encoding/json would unescape it, or fold non-ASCII letters
			// (the Kelvin sign as k, the long s as s) into name.
			return "", false
		}
		i = skipSpace(data, i+end+2)
		if i >= len(data) || data[i] != ':' {
			return "", false
		}
		i = skipSpace(data, i+1)
		if len(key) == len(name) && bytes.EqualFold(key, []byte(name)) {
			if i >= len(data) || data[i] != '"' {
				return "", false
			}
			end := bytes.IndexByte(data[i+1:], '"')
			if end < 0 {
				return "", false
			}
			v := data[i+1 : i+1+end]
			if bytes.IndexByte(v, '\\') >= 0 || !utf8.Valid(v) {
				return "", false
			}
			value, found = string(v), true
			i += end + 2
		} else if i = skipValue(data, i); i < 0 {
			return "", false
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return "", false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return value, found
		default:
			return "", false
		}
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just past the value starting at i, or -1.
// It follows strings and nesting, not the grammar inside them: what it
// lets through, encoding/json still judges.
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return -1
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				if i = skipString(data, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	default: // a number, true, false or null: up to the next delimiter
		j := i
		for j < len(data) && !isDelimiter(data[j]) {
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
}

// skipString returns the index just past the string starting at i.
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

func isDelimiter(c byte) bool {
	return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
