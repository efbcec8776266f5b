// Package testservice runs the project's service scripts (scripts/kafka.sh,
// scripts/redis.sh) for tests: it finds the repository root and runs
// `SCRIPT start`, which starts or reuses a service and prints its address.
package testservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Start runs `bash ROOT/script start` in the repository root and returns the
// last word it printed: the service's address. Errors name the script and
// end with the tail of its error output.
func Start(script string, timeout time.Duration) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	return StartIn(root, script, timeout)
}

// StartIn is Start with the repository root given.
func StartIn(root, script string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, script), "start")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s start: %w\n%s", script, err, Tail(stderr.String(), 40))
	}
	words := strings.Fields(stdout.String())
	if len(words) == 0 {
		return "", fmt.Errorf("%s start printed no address\n%s", script, Tail(stderr.String(), 40))
	}
	return words[len(words)-1], nil
}

// RepoRoot finds the directory holding go.mod: first by walking up from the
// working directory (go test runs in the package's directory), then by
// asking the go command.
func RepoRoot() (string, error) {
	if dir, err := os.Getwd(); err == nil {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("locating go.mod: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("locating go.mod: not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// Tail returns the last n lines of s, so a failure shows the script's
// diagnosis without a whole Maven log.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
