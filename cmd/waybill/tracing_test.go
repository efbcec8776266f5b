package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTracingEnabled(t *testing.T) {
	for vars, want := range map[string]bool{
		"":                              false,
		"OTEL_TRACES_EXPORTER=none":     false,
		"OTEL_TRACES_EXPORTER=console":  true,
		"OTEL_EXPORTER_OTLP_ENDPOINT=x": true,
	} {
		m := map[string]string{}
		if k, v, ok := strings.Cut(vars, "="); ok {
			m[k] = v
		}
		assert.Equal(t, want, tracingEnabled(env(m)), vars)
	}
	assert.False(t, tracingEnabled(env(map[string]string{"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})))
}

// TestBadTracingEnvironmentExits2: an exporter the SDK does not know is a
// bad environment (exit 2, which the unit does not restart), not a failure
// to retry.
func TestBadTracingEnvironmentExits2(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "bogus")
	secrets := filepath.Join(t.TempDir(), "s")
	require.NoError(t, os.WriteFile(secrets, []byte("wx1=s\n"), 0o600))
	var logs bytes.Buffer
	code := run(context.Background(), []string{"-secrets-file", secrets}, os.Getenv, &logs)
	assert.Equal(t, 2, code, logs.String())
	assert.Contains(t, logs.String(), "OTEL_TRACES_EXPORTER")
}
