package kafka

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// SASL mechanisms Config.SASL supports: those managed Kafka offers (Alibaba
// Cloud, Tencent CKafka, MSK, Confluent Cloud).
const (
	MechanismPlain       = "PLAIN"
	MechanismSCRAMSHA256 = "SCRAM-SHA-256"
	MechanismSCRAMSHA512 = "SCRAM-SHA-512"
)

// SASL authenticates waybill's connections. The zero value means none.
// Send it over TLS: PLAIN carries the password as it is.
type SASL struct {
	// Mechanism is MechanismPlain, MechanismSCRAMSHA256 or
	// MechanismSCRAMSHA512; "" turns SASL off.
	Mechanism string
	// User and Password are the credentials; both are required with a
	// Mechanism. Password is never printed (see String).
	User, Password string
}

// String shows the mechanism and user, never the password, so that a
// logged Config leaks no secret.
func (s SASL) String() string {
	if s.Mechanism == "" {
		return "SASL{}"
	}
	pw := ""
	if s.Password != "" {
		pw = " password=[redacted]"
	}
	return fmt.Sprintf("SASL{%s user=%q%s}", s.Mechanism, s.User, pw)
}

// GoString is String, for %#v.
func (s SASL) GoString() string { return s.String() }

// TLS encrypts waybill's connections. The zero value means plaintext.
type TLS struct {
	// Enable turns TLS on; setting CAFile or CertFile turns it on too.
	Enable bool
	// CAFile is a PEM file of the CAs that sign the brokers' certificates.
	// "" means the system's roots (right for Confluent Cloud, MSK and the
	// Chinese clouds' public endpoints).
	CAFile string
	// CertFile and KeyFile are the client's PEM certificate and key, for
	// brokers that require mutual TLS; both or neither.
	CertFile, KeyFile string
	// ServerName overrides the name the brokers' certificates are checked
	// against; "" means the host of each broker address.
	ServerName string
}

func (t TLS) enabled() bool { return t.Enable || t.CAFile != "" || t.CertFile != "" }

// Validate reports a configuration that cannot work, naming the field.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("Brokers is required"))
	}
	switch c.SASL.Mechanism {
	case "":
		if c.SASL.User != "" || c.SASL.Password != "" {
			errs = append(errs, errors.New("SASL.User or SASL.Password set without SASL.Mechanism"))
		}
	case MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512:
		if c.SASL.User == "" || c.SASL.Password == "" {
			errs = append(errs, fmt.Errorf("SASL.Mechanism %s needs SASL.User and SASL.Password", c.SASL.Mechanism))
		}
	default:
		errs = append(errs, fmt.Errorf("SASL.Mechanism %q is not one of %s, %s, %s", c.SASL.Mechanism, MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("TLS.CertFile and TLS.KeyFile go together"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("kafka config: %w", errors.Join(errs...))
	}
	return nil
}

// secure sets SASL and TLS on sc.
func (c Config) secure(sc *sarama.Config) error {
	if c.TLS.enabled() {
		tc, err := c.TLS.config()
		if err != nil {
			return err
		}
		sc.Net.TLS.Enable, sc.Net.TLS.Config = true, tc
	}
	if m := c.SASL.Mechanism; m != "" {
		sc.Net.SASL.Enable = true
		sc.Net.SASL.User, sc.Net.SASL.Password = c.SASL.User, c.SASL.Password
		sc.Net.SASL.Handshake = true
		switch m {
		case MechanismPlain:
			sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
		case MechanismSCRAMSHA256:
			sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha256.New)} }
		case MechanismSCRAMSHA512:
			sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha512.New)} }
		}
	}
	return nil
}

func (t TLS) config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka TLS.CAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka TLS.CAFile %s: no PEM certificate in it", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka TLS.CertFile/TLS.KeyFile: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// scramClient is sarama's SCRAMClient on xdg-go/scram.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := s.hash.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }
func (s *scramClient) Done() bool                            { return s.conv.Done() }

// Explain turns a failure to reach the cluster into an error that names
// the setting to look at: a password, a CA file, TLS on a plaintext port.
// what names the client ("kafka publisher").
func (c Config) Explain(what string, err error) error {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &invalid):
		return fmt.Errorf("%s: the brokers' TLS certificate is not valid (%s): check the brokers' certificates and this machine's clock: %w", what, invalidReason(invalid), err)
	case errors.As(err, &unknown) || (errors.As(err, &verify) && !errors.As(err, &hostname)):
		ca := c.TLS.CAFile
		if ca == "" {
			ca = "the system's roots (TLS.CAFile is empty)"
		}
		return fmt.Errorf("%s: the brokers' TLS certificate is not signed by a CA in %s: check TLS.CAFile: %w", what, ca, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("%s: the brokers' TLS certificate does not name the host: check the broker addresses or TLS.ServerName: %w", what, err)
	case errors.As(err, &record):
		return fmt.Errorf("%s: TLS is on, but %s does not answer TLS: check TLS and the port: %w", what, strings.Join(c.Brokers, ","), err)
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed):
		return fmt.Errorf("%s: SASL %s authentication as %q failed: check SASL.User and SASL.Password: %w", what, c.SASL.Mechanism, c.SASL.User, err)
	case errors.Is(err, sarama.ErrClusterAuthorizationFailed) && !c.DisableIdempotence:
		return fmt.Errorf("%s: the cluster refused the idempotent producer (InitProducerId): grant IDEMPOTENT_WRITE or set DisableIdempotence (-kafka-no-idempotence): %w", what, err)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		// A listener of another protocol hangs up on the first bytes.
		if c.TLS.enabled() {
			return fmt.Errorf("%s: %s closed the connection: is it a TLS listener? check TLS and the port: %w", what, strings.Join(c.Brokers, ","), err)
		}
		return fmt.Errorf("%s: %s closed the connection: if it is a TLS (SASL_SSL) listener, set TLS: %w", what, strings.Join(c.Brokers, ","), err)
	}
	return fmt.Errorf("%s: %s: %w", what, strings.Join(c.Brokers, ","), err)
}

// invalidReason says why x509 found a certificate invalid.
func invalidReason(e x509.CertificateInvalidError) string {
	if e.Reason == x509.Expired {
		return "expired or not yet valid"
	}
	return e.Error()
}
