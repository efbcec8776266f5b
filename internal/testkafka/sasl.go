package testkafka

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/waybillkit/waybill/internal/testservice"
)

// SASL user and password that scripts/kafka.sh gives the SASL_SSL listener for
// every mechanism it enables (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
const (
	SASLUser     = "waybill"
	SASLPassword = "waybill-secret"
)

// SASLBroker is the test broker's SASL_SSL listener, set up like managed Kafka
// (MSK, Confluent Cloud, CKafka, Alibaba Cloud): TLS first, with a certificate
// for 127.0.0.1 and localhost signed by a throw-away CA, then SASL PLAIN,
// SCRAM-SHA-256 or SCRAM-SHA-512. It is the same broker Brokers returns, so a
// topic made over one listener is seen over the other. No client certificate
// is asked for and there is no authorizer.
type SASLBroker struct {
	// Addr is the listener's host:port on 127.0.0.1.
	Addr string
	// CAFile is the PEM file of the CA that signed the broker's certificate:
	// trusting it is enough to verify the broker.
	CAFile string
	// OtherCAFile is the PEM file of an unrelated CA that signed nothing the
	// broker serves, so trusting only it must fail verification.
	OtherCAFile string
	// User and Password are accepted by every enabled mechanism.
	User     string
	Password string
}

// SASL returns the test broker's SASL_SSL listener. The first call in a test
// binary runs `scripts/kafka.sh sasl`, which starts the shared broker or
// reuses the running one (restarting it only when an older version of the
// script started it without that listener). KAFKA_BROKERS does not apply: the
// listener and its CA files exist only on the script's broker. A test that
// cannot get the listener fails, naming the script; it never skips.
//
// The CA files belong to the running broker and are made anew whenever it
// starts, so read them when connecting rather than caching their contents
// beyond a test binary.
func SASL(t testing.TB) SASLBroker {
	t.Helper()
	b, err := saslOnce()
	if err != nil {
		t.Fatalf("testkafka: no SASL_SSL Kafka listener (%s sasl failed): %v", script, err)
	}
	return b
}

// TLSConfig returns a TLS client configuration that trusts only the CA in the
// PEM file caFile (SASLBroker.CAFile, or OtherCAFile to provoke a verification
// failure). The server name is left for the client to take from the address it
// dials, which the broker's certificate covers.
func TLSConfig(t testing.TB, caFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("testkafka: CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("testkafka: no PEM certificate in %s", caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// saslOnce runs scripts/kafka.sh sasl once per test binary.
var saslOnce = sync.OnceValues(func() (SASLBroker, error) {
	root, err := testservice.RepoRoot()
	if err != nil {
		return SASLBroker{}, fmt.Errorf("%s: %w", script, err)
	}
	out, err := runScript(root, "sasl")
	if err != nil {
		return SASLBroker{}, err
	}
	return parseSASLLine(out)
})

// runScript runs `bash ROOT/scripts/kafka.sh sub` in the repository root
// under startTimeout and returns its standard output. Errors name the script
// and end with the tail of its error output. (testservice.Start runs only
// "start", whose last word is the PLAINTEXT address.)
func runScript(root, sub string, env ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, script), sub)
	cmd.Dir = root
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", script, sub, err, testservice.Tail(stderr.String(), 40))
	}
	return stdout.String(), nil
}

// parseSASLLine reads the last line `scripts/kafka.sh sasl` printed:
// "<host:port> <abs ca.pem> <abs other-ca.pem>".
func parseSASLLine(out string) (SASLBroker, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	f := strings.Fields(last)
	if len(f) != 3 {
		return SASLBroker{}, fmt.Errorf("%s sasl printed %q, want \"<addr> <ca.pem> <other-ca.pem>\"", script, last)
	}
	if _, _, err := net.SplitHostPort(f[0]); err != nil {
		return SASLBroker{}, fmt.Errorf("%s sasl printed a bad address %q: %w", script, f[0], err)
	}
	for _, p := range f[1:] {
		if !filepath.IsAbs(p) {
			return SASLBroker{}, fmt.Errorf("%s sasl printed a relative CA path %q", script, p)
		}
	}
	return SASLBroker{Addr: f[0], CAFile: f[1], OtherCAFile: f[2], User: SASLUser, Password: SASLPassword}, nil
}
