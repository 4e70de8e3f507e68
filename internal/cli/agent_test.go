package cli_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/cli"
)

// TestAgentCommand runs the real binary: it serves /metrics on the address
// it prints and exits 0 on SIGTERM.
func TestAgentCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "imwatch")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/imwatch/imwatch/cmd/imwatch").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin, "agent", "--listen", "127.0.0.1:0", "--no-collector.process", "--log-level", "warn")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			lines := make(chan string, 1)
			go func() {
				l, _ := bufio.NewReader(stdout).ReadString('\n')
				lines <- l
				_, _ = io.Copy(io.Discard, stdout)
			}()
			var line string
			select {
			case line = <-lines:
			case <-time.After(30 * time.Second):
				t.Fatalf("no address printed; stderr:\n%s", stderr.String())
			}
			var url string
			if _, err := fmt.Sscanf(line, "agent serving metrics on %s", &url); err != nil || !strings.HasSuffix(url, "/metrics") {
				t.Fatalf("first line %q: want \"agent serving metrics on http://ADDR/metrics ...\"", line)
			}
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("\nnode_load1 ")) {
				t.Fatalf("GET %s: %s, node_load1 in body: %v", url, resp.Status, bytes.Contains(body, []byte("\nnode_load1 ")))
			}
			if bytes.Contains(body, []byte("imwatch_process_")) {
				t.Error("--no-collector.process did not turn the process collector off")
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("after %s: %v; stderr:\n%s", sig, err, stderr.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("still running 20s after %s", sig)
			}
		})
	}
}

func TestAgentFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--collector.vmstat.fields", "("}, "--collector.vmstat.fields"},
		{[]string{"agent", "--collector.nosuch"}, "flag provided but not defined"},
		{[]string{"agent", "--max-series", "5"}, "--max-series 5"},
		{[]string{"agent", "--collector.process.names", " , "}, "--collector.process.names"},
		{[]string{"agent", "extra"}, `unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := cli.Main(c.args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2; stderr:\n%s", c.args, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%q: stderr does not say %q:\n%s", c.args, c.want, stderr.String())
		}
	}
}
