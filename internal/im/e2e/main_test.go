// Package e2e holds the end-to-end robustness tests of the reference IM: the
// real imwatch binary runs as separate processes (logic node, gateways,
// `imwatch up`) against a real nats-server, the tests kill and signal them and
// check what the clients' applications get.
package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// imwatchBin is the imwatch binary TestMain builds for this run.
var imwatchBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped in -short mode (they build and run the imwatch binary)")
		os.Exit(0)
	}
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "imwatch-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	imwatchBin = filepath.Join(dir, "imwatch")
	build := exec.Command("go", "build", "-o", imwatchBin, "github.com/imwatch/imwatch/cmd/imwatch")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build imwatch: %v\n", err)
		return 1
	}
	return m.Run()
}

// proc is one imwatch process started by a test, killed at cleanup if it is
// still running.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	logs string // file with the process's stderr

	mu      sync.Mutex
	lines   []string      // stdout so far
	newLine chan struct{} // closed and replaced on each stdout line

	done     chan struct{} // closed when the process has exited
	exitCode int
	waitErr  error
}

// startProc runs imwatch with args; name tells the processes apart in logs.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, newLine: make(chan struct{}), done: make(chan struct{})}
	p.logs = filepath.Join(t.TempDir(), name+".log")
	stderr, err := os.Create(p.logs)
	if err != nil {
		t.Fatalf("%s: log file: %v", name, err)
	}
	p.cmd = exec.Command(imwatchBin, args...)
	p.cmd.Stderr = stderr
	// The child dies with the test binary even when the test is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("%s: stdout pipe: %v", name, err)
	}
	if err := p.cmd.Start(); err != nil {
		stderr.Close()
		t.Fatalf("%s: start %v: %v", name, args, err)
	}
	stderr.Close() // the child holds its own copy
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.newLine)
			p.newLine = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() {
		<-copied // Wait closes the pipe: read it to the end first
		err := p.cmd.Wait()
		p.waitErr = err
		p.exitCode = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s: last log lines:\n%s", p.name, p.logTail(40))
		}
	})
	return p
}

// waitLine waits for a stdout line containing substr and returns it.
func (p *proc) waitLine(substr string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		p.mu.Lock()
		lines, next := p.lines, p.newLine
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if strings.Contains(lines[seen], substr) {
				return lines[seen]
			}
		}
		select {
		case <-next:
		case <-p.done:
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if n > seen {
				continue
			}
			p.t.Fatalf("%s exited (code %d) before printing %q; log:\n%s", p.name, p.exitCode, substr, p.logTail(40))
		case <-deadline:
			p.t.Fatalf("%s did not print %q within %s; log:\n%s", p.name, substr, timeout, p.logTail(40))
		}
	}
}

// stdout is everything the process printed so far.
func (p *proc) stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// signal sends sig to the process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill() {
	p.t.Helper()
	p.signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

// wait waits for the process to exit and returns its exit code (-1 when a
// signal ended it).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.exitCode
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s; log:\n%s", p.name, timeout, p.logTail(40))
		return 0
	}
}

// waitLog waits for a log line (stderr) containing substr.
func (p *proc) waitLog(substr string, timeout time.Duration) {
	p.t.Helper()
	imtest.Eventually(p.t, timeout, func() error {
		data, err := os.ReadFile(p.logs)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), substr) {
			return fmt.Errorf("%s has not logged %q", p.name, substr)
		}
		return nil
	})
}

func (p *proc) logTail(n int) string {
	data, err := os.ReadFile(p.logs)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// imCluster is a reference IM of separate processes: a real nats-server, one
// logic node and gateways, each restartable on the same address.
type imCluster struct {
	t        *testing.T
	nats     *imtest.NATSProcess
	logic    *proc
	gateways map[string]*proc
	listen   map[string]string // gateway id -> host:port, kept across restarts
	order    []string
	starts   int
	// args are the extra flags of a part ("logic-1" or a gateway id);
	// without them a part does not trace (--tracing=false).
	args func(part string) []string
}

// startIM starts nats-server, a logic node and one gateway per id, none
// of them tracing.
func startIM(t *testing.T, gatewayIDs ...string) *imCluster {
	t.Helper()
	return startIMWith(t, func(string) []string { return []string{"--tracing=false"} }, gatewayIDs...)
}

// startIMWith is startIM with args(part) added to each part's flags.
func startIMWith(t *testing.T, args func(part string) []string, gatewayIDs ...string) *imCluster {
	t.Helper()
	c := &imCluster{t: t, nats: imtest.StartNATSServer(t), gateways: map[string]*proc{}, listen: map[string]string{}, args: args}
	c.startLogic()
	for _, id := range gatewayIDs {
		c.listen[id] = "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
		c.order = append(c.order, id)
		c.startGateway(id)
	}
	return c
}

// startLogic starts (or restarts) the logic node logic-1 and waits until it serves.
func (c *imCluster) startLogic() {
	c.t.Helper()
	c.starts++
	c.logic = startProc(c.t, fmt.Sprintf("logic-%d", c.starts), append([]string{"im", "logic", "--nats", c.nats.URL, "--node", "logic-1", "--metrics-listen", "127.0.0.1:0"}, c.args("logic-1")...)...)
	c.logic.waitLine("logic node logic-1 running", 30*time.Second)
}

// startGateway starts (or restarts) gateway id on its address and waits until
// it answers /-/healthy.
func (c *imCluster) startGateway(id string) {
	c.t.Helper()
	c.starts++
	p := startProc(c.t, fmt.Sprintf("%s-%d", id, c.starts), append([]string{"im", "gateway", "--nats", c.nats.URL,
		"--listen", c.listen[id], "--id", id, "--secret", string(imtest.Secret)}, c.args(id)...)...)
	p.waitLine("gateway "+id+" listening on ws://"+c.listen[id]+"/ws", 30*time.Second)
	waitHealthy(c.t, "http://"+c.listen[id]+"/-/healthy", 10*time.Second)
	c.gateways[id] = p
}

// urls are the gateways' WebSocket URLs, first's first: a client tries them in turn.
func (c *imCluster) urls(first string) []string {
	out := []string{wsURL(c.listen[first])}
	for _, id := range c.order {
		if id != first {
			out = append(out, wsURL(c.listen[id]))
		}
	}
	return out
}

func wsURL(hostport string) string { return "ws://" + hostport + "/ws" }

// waitHealthy polls url until it answers 200.
func waitHealthy(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	imtest.Eventually(t, timeout, func() error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

// ctxT is a context that ends after d, or when the test ends.
func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
