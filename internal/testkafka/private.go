package testkafka

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/waybillkit/waybill/internal/testservice"
)

// PrivateBroker is a Kafka broker of one test's own, started by
// scripts/kafka.sh in a run directory of its own (KAFKA_RUN_DIR), for tests
// of what a process does while Kafka does not answer: Freeze stops the
// broker's process (SIGSTOP), so that connections stay open and nothing
// answers, as with a partitioned network; Thaw resumes it.
type PrivateBroker struct {
	Addr string
	pid  int
}

// Private starts a private broker, stopped when the test ends. It takes a
// broker's start-up time (about ten seconds).
func Private(t testing.TB) *PrivateBroker {
	t.Helper()
	root, err := testservice.RepoRoot()
	if err != nil {
		t.Fatalf("testkafka: %v", err)
	}
	run := t.TempDir()
	env := "KAFKA_RUN_DIR=" + run
	out, err := runScript(root, "start", env)
	if err != nil {
		t.Fatalf("testkafka: private broker: %v", err)
	}
	t.Cleanup(func() {
		if _, err := runScript(root, "stop", env); err != nil {
			t.Errorf("testkafka: stopping the private broker: %v", err)
		}
	})
	fields := strings.Fields(out)
	if len(fields) == 0 {
		t.Fatalf("testkafka: %s start printed no address", script)
	}
	b, err := os.ReadFile(filepath.Join(run, "kafka.pid"))
	if err != nil {
		t.Fatalf("testkafka: private broker pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("testkafka: private broker pid %q: %v", b, err)
	}
	p := &PrivateBroker{Addr: fields[len(fields)-1], pid: pid}
	t.Cleanup(p.Thaw) // a frozen broker would ignore the stop
	return p
}

// Freeze stops the broker's process: it answers nothing until Thaw.
func (p *PrivateBroker) Freeze() { _ = syscall.Kill(p.pid, syscall.SIGSTOP) }

// Thaw resumes a frozen broker.
func (p *PrivateBroker) Thaw() { _ = syscall.Kill(p.pid, syscall.SIGCONT) }
