package redisutil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrUnreadable is returned (wrapped) by GetJSON when the key holds a value
// that cannot be what was stored there: a string that does not decode, or
// another kind of value (a hash, a list). A store usually treats it as a
// missing value that its next SET replaces, unlike a failed GET.
var ErrUnreadable = errors.New("value is not readable JSON")

// GetJSON reads the string at key and decodes its JSON into v. ok is false,
// with a nil error, when the key does not exist. An undecodable value or a
// key of another type gives ErrUnreadable wrapped around the cause (the
// *json.SyntaxError, say, or Redis's WRONGTYPE); any other error is the
// client's, returned as it is, for the caller to wrap with the key it meant.
func GetJSON(ctx context.Context, rdb redis.UniversalClient, key string, v any) (ok bool, err error) {
	return DecodeJSON(rdb.Get(ctx, key), v)
}

// DecodeJSON is GetJSON for a GET already run, in a pipeline say.
func DecodeJSON(get *redis.StringCmd, v any) (ok bool, err error) {
	b, err := get.Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
		return false, fmt.Errorf("%w: %w", ErrUnreadable, err)
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnreadable, err)
	}
	return true, nil
}
