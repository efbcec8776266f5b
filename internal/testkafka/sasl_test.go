package testkafka

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/waybillkit/waybill/kafka"
)

// saslConfig returns a sarama configuration for b's listener with the given
// mechanism and password, trusting only the CA in caFile, as package kafka
// builds it (its SCRAM client included). Failures are meant to come back at
// once, so there are no metadata retries.
func saslConfig(t *testing.T, b SASLBroker, mechanism sarama.SASLMechanism, password, caFile string) *sarama.Config {
	t.Helper()
	kc := kafka.Config{Brokers: []string{b.Addr}, ClientID: "waybill-test",
		SASL: kafka.SASL{Mechanism: string(mechanism), User: b.User, Password: password},
		TLS:  kafka.TLS{CAFile: caFile},
		Adjust: func(sc *sarama.Config) {
			sc.Net.DialTimeout = 10 * time.Second
			sc.Metadata.Retry.Max = 0
		}}
	cfg, err := kc.SaramaConfig(nil)
	if err != nil {
		t.Fatalf("sarama config for %s: %v", mechanism, err)
	}
	return cfg
}

var mechanisms = []sarama.SASLMechanism{sarama.SASLTypePlaintext, sarama.SASLTypeSCRAMSHA256, sarama.SASLTypeSCRAMSHA512}

// TestSASLSCRAMRoundTrip connects over SASL_SSL with SCRAM-SHA-512, verifying
// the broker with CAFile: it creates a topic, finds it listed, sees the broker
// advertise the SASL_SSL address (so no connection fell back to PLAINTEXT), and
// reads back a record it produced.
func TestSASLSCRAMRoundTrip(t *testing.T) {
	b := SASL(t)
	if plain := Brokers(t); slices.Contains(plain, b.Addr) {
		t.Fatalf("SASL_SSL address %s is also a PLAINTEXT address %v", b.Addr, plain)
	}
	cfg := saslConfig(t, b, sarama.SASLTypeSCRAMSHA512, b.Password, b.CAFile)
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Return.Successes = true
	client, err := sarama.NewClient([]string{b.Addr}, cfg)
	if err != nil {
		t.Fatalf("connect to %s over SASL_SSL/SCRAM-SHA-512: %v", b.Addr, err)
	}
	defer client.Close()
	for _, br := range client.Brokers() {
		if br.Addr() != b.Addr {
			t.Fatalf("broker %d advertised %s over SASL_SSL, want %s", br.ID(), br.Addr(), b.Addr)
		}
	}

	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	topic := Topic(t, "sasl")
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
		t.Fatalf("create topic %s over SASL_SSL: %v", topic, err)
	}
	if err := waitLeaders(admin, topic, 2); err != nil {
		t.Fatalf("topic %s: %v", topic, err)
	}
	topics, err := admin.ListTopics()
	if err != nil {
		t.Fatalf("list topics over SASL_SSL: %v", err)
	}
	if _, ok := topics[topic]; !ok {
		t.Fatalf("topic %s not among the %d listed over SASL_SSL", topic, len(topics))
	}

	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	partition, offset, err := producer.SendMessage(&sarama.ProducerMessage{
		Topic: topic, Key: sarama.StringEncoder("k"), Value: sarama.StringEncoder("over SASL_SSL"),
	})
	if err != nil {
		t.Fatalf("produce to %s over SASL_SSL: %v", topic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, partition, offset)
	if err != nil {
		t.Fatalf("consume %s/%d@%d over SASL_SSL: %v", topic, partition, offset, err)
	}
	defer pc.Close()
	select {
	case m := <-pc.Messages():
		if string(m.Key) != "k" || string(m.Value) != "over SASL_SSL" {
			t.Fatalf("read key=%q value=%q at %s/%d@%d", m.Key, m.Value, topic, m.Partition, m.Offset)
		}
	case err := <-pc.Errors():
		t.Fatalf("consume %s over SASL_SSL: %v", topic, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("no record from %s/%d@%d within 30s", topic, partition, offset)
	}
}

// TestSASLMechanisms checks that every mechanism the listener enables accepts
// the user with the right password and refuses a wrong one with Kafka's
// SASL_AUTHENTICATION_FAILED.
func TestSASLMechanisms(t *testing.T) {
	b := SASL(t)
	for _, mech := range mechanisms {
		t.Run(string(mech), func(t *testing.T) {
			client, err := sarama.NewClient([]string{b.Addr}, saslConfig(t, b, mech, b.Password, b.CAFile))
			if err != nil {
				t.Fatalf("connect with %s: %v", mech, err)
			}
			if err := client.RefreshMetadata(); err != nil {
				t.Errorf("metadata with %s: %v", mech, err)
			}
			client.Close()

			client, err = sarama.NewClient([]string{b.Addr}, saslConfig(t, b, mech, b.Password+"-wrong", b.CAFile))
			if err == nil {
				client.Close()
				t.Fatalf("%s with a wrong password connected", mech)
			}
			if !errors.Is(err, sarama.ErrSASLAuthenticationFailed) {
				t.Fatalf("%s with a wrong password: %v, want %v", mech, err, sarama.ErrSASLAuthenticationFailed)
			}
		})
	}
}

// TestSASLUntrustedCA checks that the broker's certificate does not verify
// against OtherCAFile, so the TLS handshake fails before any SASL exchange,
// and that it does verify for both names it is issued for.
func TestSASLUntrustedCA(t *testing.T) {
	b := SASL(t)
	client, err := sarama.NewClient([]string{b.Addr}, saslConfig(t, b, sarama.SASLTypeSCRAMSHA512, b.Password, b.OtherCAFile))
	if err == nil {
		client.Close()
		t.Fatalf("connected to %s trusting only %s", b.Addr, b.OtherCAFile)
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("trusting only %s: %v, want %T", b.OtherCAFile, err, unknown)
	}

	for _, name := range []string{"127.0.0.1", "localhost"} {
		cfg := TLSConfig(t, b.CAFile)
		cfg.ServerName = name
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", b.Addr, cfg)
		if err != nil {
			t.Fatalf("TLS to %s as %q: %v", b.Addr, name, err)
		}
		conn.Close()
	}
	cfg := TLSConfig(t, b.CAFile)
	cfg.ServerName = "kafka.example.com"
	if conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", b.Addr, cfg); err == nil {
		conn.Close()
		t.Fatalf("TLS to %s as kafka.example.com verified; the certificate should cover only 127.0.0.1 and localhost", b.Addr)
	}
}

func TestParseSASLLine(t *testing.T) {
	got, err := parseSASLLine("scripts/kafka.sh: noise\n127.0.0.1:2345 /r/tls/ca.pem /r/tls/other-ca.pem\n")
	want := SASLBroker{Addr: "127.0.0.1:2345", CAFile: "/r/tls/ca.pem", OtherCAFile: "/r/tls/other-ca.pem", User: "waybill", Password: "waybill-secret"}
	if err != nil || got != want {
		t.Fatalf("parseSASLLine = %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{"", "127.0.0.1:2345", "127.0.0.1 /a /b", "127.0.0.1:1 rel/ca.pem /b", "127.0.0.1:1 /a /b /c"} {
		if _, err := parseSASLLine(bad); err == nil || !strings.Contains(err.Error(), script) {
			t.Errorf("parseSASLLine(%q) err = %v, want one naming %s", bad, err, script)
		}
	}
}
