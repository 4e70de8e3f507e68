// Package imtest has helpers for tests of the reference IM: an in-process
// cluster, clients with tokens, and polling instead of sleeping.
package imtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/internal/testproc"
)

// Secret is the token secret of test clusters.
var Secret = []byte("imwatch-test-secret-0123456789")

// Logger is quiet unless IMWATCH_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// StartCluster starts an in-process cluster with an embedded NATS (or natsURL)
// and the given number of gateways on free loopback ports.
func StartCluster(t testing.TB, natsURL string, gateways int, tune ...func(*cluster.Options)) *cluster.Cluster {
	t.Helper()
	o := cluster.Options{DataDir: t.TempDir(), NATSURL: natsURL, Secret: Secret, Log: Logger()}
	for i := 0; i < gateways; i++ {
		o.GatewayListen = append(o.GatewayListen, "127.0.0.1:0")
	}
	for _, f := range tune {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, o)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() { c.Stop(10 * time.Second) })
	return c
}

// Token returns a token source for user and device.
func Token(user, device string) func() (string, error) {
	return func() (string, error) { return protocol.NewToken(Secret, user, device, time.Hour) }
}

// Dial connects user/device to the gateways at urls and closes it at cleanup.
func Dial(t testing.TB, urls []string, user, device string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URLs: urls, Token: Token(user, device), Log: Logger()})
	if err != nil {
		t.Fatalf("dial %s/%s: %v", user, device, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Eventually polls f until it returns nil or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	testproc.Eventually(t, timeout, f)
}

// Receive takes n messages from c or fails after timeout.
func Receive(t testing.TB, c *client.Client, n int, timeout time.Duration) []client.Message {
	t.Helper()
	var out []client.Message
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case m := <-c.Messages():
			out = append(out, m)
		case <-deadline:
			t.Fatalf("%s/%s received %d of %d messages in %s", c.User(), c.Device(), len(out), n, timeout)
		}
	}
	return out
}

// ExpectNone fails if c receives a message within d.
func ExpectNone(t testing.TB, c *client.Client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		t.Fatalf("%s/%s received an unexpected message %+v", c.User(), c.Device(), m)
	case <-time.After(d):
	}
}

// Bodies are the bodies of msgs.
func Bodies(msgs []client.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Body
	}
	return out
}

// Seq is "m0", "m1", ... "m(n-1)".
func Seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// NATSServer returns the path of the nats-server binary (Debian package
// nats-server). Without it the test is skipped, or fails when
// IMWATCH_INTEGRATION=1 says the real servers must be there.
func NATSServer(t testing.TB) string {
	t.Helper()
	return testproc.NATSServer(t)
}

// RequireBinary finds name on PATH, skipping or failing (IMWATCH_INTEGRATION=1)
// when it is missing.
func RequireBinary(t testing.TB, name, debPackage string) string {
	t.Helper()
	return testproc.RequireBinary(t, name, debPackage)
}

// FreePort returns a free loopback TCP port.
func FreePort(t testing.TB) int {
	t.Helper()
	return testproc.FreePort(t)
}

// NATSProcess is a real nats-server started by a test.
type NATSProcess = testproc.NATSProcess

// StartNATSServer starts the Debian nats-server with JetStream on a free
// loopback port, data in a temporary directory, stopped at cleanup.
func StartNATSServer(t testing.TB) *NATSProcess {
	t.Helper()
	return testproc.StartNATSServer(t)
}
