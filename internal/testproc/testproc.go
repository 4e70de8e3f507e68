// Package testproc starts the real servers tests run against (nats-server
// from its Debian package) and polls instead of sleeping. It imports
// nothing of imwatch, so that the tests of any package, pkg/imtrace's
// included, can use it; internal/im/imtest wraps it for the IM's tests.
package testproc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Eventually polls f until it returns nil or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// NATSServer returns the path of the nats-server binary (Debian package
// nats-server). Without it the test is skipped, or fails when
// IMWATCH_INTEGRATION=1 says the real servers must be there.
func NATSServer(t testing.TB) string {
	t.Helper()
	return RequireBinary(t, "nats-server", "nats-server")
}

// RequireBinary finds name on PATH, skipping or failing (IMWATCH_INTEGRATION=1)
// when it is missing.
func RequireBinary(t testing.TB, name, debPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("IMWATCH_INTEGRATION") == "1" {
		t.Fatalf("%s not found (Debian package %s); IMWATCH_INTEGRATION=1 requires it: run make test-deps", name, debPackage)
	}
	t.Skipf("%s not found (Debian package %s); run make test-deps", name, debPackage)
	return ""
}

// FreePort returns a free loopback TCP port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// NATSProcess is a real nats-server started by a test.
type NATSProcess struct {
	URL  string
	cmd  *exec.Cmd
	args []string
	t    testing.TB
}

// StartNATSServer starts the Debian nats-server with JetStream on a free
// loopback port, data in a temporary directory, stopped at cleanup.
func StartNATSServer(t testing.TB) *NATSProcess {
	t.Helper()
	bin := NATSServer(t)
	port := FreePort(t)
	p := &NATSProcess{
		URL:  fmt.Sprintf("nats://127.0.0.1:%d", port),
		args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", t.TempDir()},
		t:    t,
	}
	p.cmd = exec.Command(bin, p.args...)
	p.start()
	t.Cleanup(p.Stop)
	return p
}

func (p *NATSProcess) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.cmd.Path, p.args...)
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		p.cmd.Stderr = os.Stderr
	}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start nats-server: %v", err)
	}
	Eventually(p.t, 15*time.Second, func() error {
		nc, err := nats.Connect(p.URL)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
}

// Stop terminates the server and waits for it.
func (p *NATSProcess) Stop() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}
