// Package centertest has helpers for tests of the center: an in-process
// center on a free port, real Prometheus and Alertmanager processes from the
// Debian packages, remote-write requests, and Prometheus API queries.
package centertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// Config returns a config for a test center: data in a temporary
// directory, a free loopback port, fast scrapes and rule evaluation.
func Config(t testing.TB) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Storage.Path = filepath.Join(t.TempDir(), "tsdb")
	cfg.Listen = "127.0.0.1:0"
	cfg.Scrape.Interval = config.Duration(time.Second)
	cfg.Scrape.Timeout = config.Duration(time.Second)
	cfg.EvaluationInterval = config.Duration(time.Second)
	return cfg
}

// Start starts a center with cfg and stops it at cleanup.
func Start(t testing.TB, cfg config.Config) *center.Center {
	t.Helper()
	c, err := center.New(cfg, imtest.Logger())
	if err != nil {
		t.Fatalf("new center: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start center: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop center: %v", err)
		}
	})
	return c
}

// Process is a server started by a test.
type Process struct {
	Name string
	URL  string
	Dir  string
	cmd  *exec.Cmd
	bin  string
	args []string
	t    testing.TB
	log  *bytes.Buffer
}

// StartPrometheus starts the Debian prometheus with configYAML on a free
// port, data in a temporary directory, the remote-write receiver on, and
// waits until it is ready.
func StartPrometheus(t testing.TB, configYAML string, extraArgs ...string) *Process {
	t.Helper()
	bin := imtest.RequireBinary(t, "prometheus", "prometheus")
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(configYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	port := imtest.FreePort(t)
	args := append([]string{
		"--config.file=" + cfgFile,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
		"--web.enable-remote-write-receiver",
		"--web.enable-lifecycle",
	}, extraArgs...)
	return startProcess(t, "prometheus", bin, args, fmt.Sprintf("http://127.0.0.1:%d", port), dir)
}

// StartAlertmanager starts the Debian prometheus-alertmanager with
// configYAML on a free port, clustering off.
func StartAlertmanager(t testing.TB, configYAML string) *Process {
	t.Helper()
	bin := imtest.RequireBinary(t, "prometheus-alertmanager", "prometheus-alertmanager")
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfgFile, []byte(configYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	port := imtest.FreePort(t)
	args := []string{
		"--config.file=" + cfgFile,
		"--storage.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
		"--cluster.listen-address=",
	}
	return startProcess(t, "alertmanager", bin, args, fmt.Sprintf("http://127.0.0.1:%d", port), dir)
}

func startProcess(t testing.TB, name, bin string, args []string, u, dir string) *Process {
	t.Helper()
	p := &Process{Name: name, URL: u, Dir: dir, bin: bin, args: args, t: t, log: &bytes.Buffer{}}
	p.Start()
	t.Cleanup(p.Stop)
	return p
}

// Start (re)starts the process and waits until /-/ready answers 200.
func (p *Process) Start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		p.cmd.Stderr = os.Stderr
	}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.Name, err)
	}
	imtest.Eventually(p.t, 30*time.Second, func() error {
		if p.cmd.ProcessState != nil {
			return fmt.Errorf("%s exited: %s", p.Name, p.log)
		}
		resp, err := http.Get(p.URL + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s not ready: %s", p.Name, resp.Status)
		}
		return nil
	})
}

// Stop terminates the process and waits for it.
func (p *Process) Stop() {
	if p.cmd == nil || p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// Log is what the process printed.
func (p *Process) Log() string { return p.log.String() }

// WriteRequest encodes w as a remote-write 1.0 body.
func WriteRequest(t testing.TB, w *prompb.WriteRequest) []byte {
	t.Helper()
	b, err := w.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return snappy.Encode(nil, b)
}

// PostWrite posts a remote-write body to baseURL/api/v1/write and returns
// the status code and the answer's body.
func PostWrite(t testing.TB, baseURL string, body []byte, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, baseURL+"/api/v1/write", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post write: %v", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

// Response is the envelope of Prometheus API answers.
type Response struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

// QueryData is the data of a query answer.
type QueryData struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// Series is one series of a matrix or vector answer.
type Series struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
	Values [][]any           `json:"values"`
}

// API calls GET baseURL+path?params and decodes the answer, whatever its status.
func API(t testing.TB, baseURL, path string, params url.Values, header ...string) (int, Response) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, baseURL+path+"?"+params.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var r Response
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %s: not JSON: %v: %s", path, resp.Status, err, body)
	}
	return resp.StatusCode, r
}

// Query runs an instant query and returns its series, or an error to poll on.
func Query(baseURL, q string, at time.Time) ([]Series, error) {
	params := url.Values{"query": {q}}
	if !at.IsZero() {
		params.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	resp, err := http.Get(baseURL + "/api/v1/query?" + params.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r Response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s", q, r.ErrorType, r.Error)
	}
	var d QueryData
	if err := json.Unmarshal(r.Data, &d); err != nil {
		return nil, err
	}
	var out []Series
	if err := json.Unmarshal(d.Result, &out); err != nil {
		return nil, fmt.Errorf("result of %q: %w", q, err)
	}
	return out, nil
}

// PostOTLP posts an OTLP/HTTP trace body to baseURL/v1/traces and returns
// the status code and the answer's body.
func PostOTLP(t testing.TB, baseURL string, body []byte, contentType string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, baseURL+"/v1/traces", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post otlp: %v", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, msg
}

// GetJSON calls GET baseURL+path and decodes the JSON answer into v,
// whatever its status, which it returns.
func GetJSON(t testing.TB, baseURL, path string, v any) int {
	t.Helper()
	resp, err := http.Get(baseURL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %s: not JSON: %v: %s", path, resp.Status, err, body)
	}
	return resp.StatusCode
}
