package kafka

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	b := []string{"k:9093"}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "Brokers is required"},
		{Config{Brokers: b, SASL: SASL{Mechanism: "GSSAPI", User: "u", Password: "p"}}, `SASL.Mechanism "GSSAPI" is not one of`},
		{Config{Brokers: b, SASL: SASL{Mechanism: MechanismSCRAMSHA512, User: "u"}}, "needs SASL.User and SASL.Password"},
		{Config{Brokers: b, SASL: SASL{User: "u"}}, "without SASL.Mechanism"},
		{Config{Brokers: b, TLS: TLS{CertFile: "c.pem"}}, "TLS.CertFile and TLS.KeyFile go together"},
	} {
		assert.ErrorContains(t, tc.cfg.Validate(), tc.want)
	}
	assert.NoError(t, Config{Brokers: b, SASL: SASL{Mechanism: MechanismPlain, User: "u", Password: "p"}}.Validate())
}

func TestSASLNeverPrintsThePassword(t *testing.T) {
	c := Config{Brokers: []string{"k:9093"}, SASL: SASL{Mechanism: MechanismSCRAMSHA256, User: "waybill", Password: "hunter2"}}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		assert.NotContains(t, s, "hunter2")
		assert.Contains(t, s, "waybill")
	}
}

func TestSaramaConfigAppliesSecurityRoleThenAdjust(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(ca, selfSignedPEM(t), 0o600))
	c := Config{Brokers: []string{"k:9093"}, SASL: SASL{Mechanism: MechanismSCRAMSHA512, User: "u", Password: "p"},
		TLS:    TLS{CAFile: ca, ServerName: "kafka.internal"},
		Adjust: func(sc *sarama.Config) { sc.Producer.Retry.Max = 3; sc.Net.DialTimeout = 7 }}
	sc, err := c.ProducerConfig(nil)
	require.NoError(t, err)
	assert.True(t, sc.Net.TLS.Enable, "a CA file turns TLS on")
	assert.Equal(t, "kafka.internal", sc.Net.TLS.Config.ServerName)
	assert.NotNil(t, sc.Net.TLS.Config.RootCAs)
	assert.True(t, sc.Net.SASL.Enable)
	assert.Equal(t, sarama.SASLMechanism(sarama.SASLTypeSCRAMSHA512), sc.Net.SASL.Mechanism)
	require.NotNil(t, sc.Net.SASL.SCRAMClientGeneratorFunc)
	assert.True(t, sc.Producer.Idempotent)
	assert.Equal(t, 1, sc.Net.MaxOpenRequests)
	assert.Equal(t, sarama.WaitForAll, sc.Producer.RequiredAcks)
	assert.Equal(t, 3, sc.Producer.Retry.Max, "Adjust comes last")

	c.DisableIdempotence, c.Adjust = true, nil
	sc, err = c.ProducerConfig(nil)
	require.NoError(t, err)
	assert.False(t, sc.Producer.Idempotent)

	c.TLS.CAFile = filepath.Join(dir, "missing.pem")
	_, err = c.SaramaConfig(nil)
	assert.ErrorContains(t, err, "TLS.CAFile")
	require.NoError(t, os.WriteFile(c.TLS.CAFile, []byte("not a certificate"), 0o600))
	_, err = c.SaramaConfig(nil)
	assert.ErrorContains(t, err, "no PEM certificate")
}

func TestExplainNamesTheSetting(t *testing.T) {
	c := Config{Brokers: []string{"k:9093"}, SASL: SASL{Mechanism: MechanismSCRAMSHA512, User: "waybill", Password: "p"}, TLS: TLS{CAFile: "/etc/ca.pem"}}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{sarama.Wrap(sarama.ErrOutOfBrokers, sarama.ErrSASLAuthenticationFailed), `SASL SCRAM-SHA-512 authentication as "waybill" failed: check SASL.User and SASL.Password`},
		{sarama.Wrap(sarama.ErrOutOfBrokers, x509.UnknownAuthorityError{}), "not signed by a CA in /etc/ca.pem: check TLS.CAFile"},
		{sarama.Wrap(sarama.ErrOutOfBrokers, x509.HostnameError{Host: "k"}), "check the broker addresses or TLS.ServerName"},
		{errors.New("connection refused"), "kafka publisher: k:9093: connection refused"},
		{sarama.Wrap(sarama.ErrOutOfBrokers, io.EOF), "closed the connection: is it a TLS listener? check TLS and the port"},
		{sarama.Wrap(sarama.ErrOutOfBrokers, x509.CertificateInvalidError{Reason: x509.Expired}), "not valid (expired or not yet valid)"},
		{sarama.Wrap(sarama.ErrOutOfBrokers, sarama.ErrClusterAuthorizationFailed), "-kafka-no-idempotence"},
	} {
		err := c.Explain("kafka publisher", tc.err)
		assert.ErrorContains(t, err, tc.want)
		assert.ErrorIs(t, err, tc.err, "the cause stays reachable")
	}
	plain := Config{Brokers: []string{"k:9093"}}
	assert.ErrorContains(t, plain.Explain("kafka", io.ErrUnexpectedEOF), "if it is a TLS (SASL_SSL) listener, set TLS")
}

// selfSignedPEM is a throwaway CA certificate, made for the test.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
