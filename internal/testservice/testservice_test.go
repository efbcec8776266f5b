package testservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartInReturnsLastWord(t *testing.T) {
	root := t.TempDir()
	script := filepath.Join("scripts", "svc.sh")
	if err := os.MkdirAll(filepath.Join(root, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	body := "#!/usr/bin/env bash\necho starting >&2\necho 'reusing'\necho 127.0.0.1:4242\n"
	if err := os.WriteFile(filepath.Join(root, script), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := StartIn(root, script, time.Minute)
	if err != nil || got != "127.0.0.1:4242" {
		t.Fatalf("StartIn = %q, %v; want 127.0.0.1:4242", got, err)
	}
}

func TestStartInFailureNamesScript(t *testing.T) {
	_, err := StartIn(t.TempDir(), "scripts/missing.sh", time.Minute)
	if err == nil || !strings.Contains(err.Error(), "scripts/missing.sh") {
		t.Fatalf("err = %v, want one naming scripts/missing.sh", err)
	}
}

func TestRepoRootHoldsGoMod(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("RepoRoot() = %s without go.mod", root)
	}
}

func TestTail(t *testing.T) {
	if got := Tail("a\nb\nc\nd\n", 2); got != "c\nd" {
		t.Fatalf("Tail = %q", got)
	}
	if got := Tail("only", 5); got != "only" {
		t.Fatalf("Tail = %q", got)
	}
}
