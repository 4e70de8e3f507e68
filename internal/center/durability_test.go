package center_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/cli"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// TestMain lets the test binary run `imwatch center` (the real command
// line) as a child process, so that tests can signal it and kill -9 it.
func TestMain(m *testing.M) {
	if os.Getenv("IMWATCH_CENTER_CHILD") == "1" {
		args := os.Args[1:]
		for i, a := range args {
			if a == "--" {
				args = args[i+1:]
				break
			}
		}
		os.Exit(cli.Main(args, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type child struct {
	cmd  *exec.Cmd
	url  string
	exit chan error
}

// startChild runs `imwatch center --config cfgFile --listen 127.0.0.1:0`.
func startChild(t *testing.T, cfgFile string) *child {
	t.Helper()
	level := "error"
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		level = "debug"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "--", "center", "--config", cfgFile, "--listen", "127.0.0.1:0", "--log-level", level)
	cmd.Env = append(os.Environ(), "IMWATCH_CENTER_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, exit: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "center listening on "); ok {
				u, _, _ := strings.Cut(rest, " ")
				lines <- u
			}
		}
		ch.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	select {
	case u := <-lines:
		ch.url = u
		return ch
	case err := <-ch.exit:
		t.Fatalf("child center exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("child center did not start")
	}
	return nil
}

// TestKill9KeepsAcknowledgedWrites: every sample of every remote write
// answered 2xx is there after the center is killed with SIGKILL right after
// the last answer, while other writes are still in flight.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprintf("wal_fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			cfgFile := filepath.Join(dir, "center.yml")
			writeFile(t, cfgFile, fmt.Sprintf("storage: {path: data, wal_fsync: %v}\n", fsync))
			ch := startChild(t, cfgFile)

			const workers, seriesPer, samplesPer, target = 4, 100, 10, 120
			base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
			var acked sync.Map // "w-j" -> true
			var n atomic.Int64
			var killed atomic.Bool
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; !killed.Load(); j++ {
						req := &prompb.WriteRequest{}
						id := fmt.Sprintf("%d-%d", w, j)
						for s := 0; s < seriesPer; s++ {
							ts := prompb.TimeSeries{Labels: []prompb.Label{
								{Name: "__name__", Value: "kill_test"}, {Name: "req", Value: id}, {Name: "s", Value: fmt.Sprint(s)},
							}}
							for k := 0; k < samplesPer; k++ {
								ts.Samples = append(ts.Samples, prompb.Sample{Timestamp: base.Add(time.Duration(k) * time.Second).UnixMilli(), Value: float64(j*1000 + s*10 + k)})
							}
							req.Timeseries = append(req.Timeseries, ts)
						}
						code, _ := postQuiet(ch.url, centertest.WriteRequest(t, req))
						if code != 204 || killed.Load() {
							continue
						}
						acked.Store(id, j)
						if n.Add(1) == target && killed.CompareAndSwap(false, true) {
							_ = ch.cmd.Process.Kill() // SIGKILL, right after the answer
						}
					}
				}()
			}
			wg.Wait()
			<-ch.exit

			ch = startChild(t, cfgFile)
			counts := querySum(t, ch.url, `sum by (req) (count_over_time(kill_test[1h]))`)
			sums := querySum(t, ch.url, `sum by (req) (sum_over_time(kill_test[1h]))`)
			missing := 0
			acked.Range(func(k, v any) bool {
				id, j := k.(string), v.(int)
				wantSum := 0
				for s := 0; s < seriesPer; s++ {
					for k := 0; k < samplesPer; k++ {
						wantSum += j*1000 + s*10 + k
					}
				}
				if counts[id] != seriesPer*samplesPer || sums[id] != float64(wantSum) {
					missing++
					if missing < 5 {
						t.Errorf("request %s was acknowledged but has %v samples (sum %v), want %d (sum %d)", id, counts[id], sums[id], seriesPer*samplesPer, wantSum)
					}
				}
				return true
			})
			if missing > 0 {
				t.Errorf("%d acknowledged requests lost samples", missing)
			}
			t.Logf("%d requests acknowledged before kill -9, all there after restart", n.Load())
		})
	}
}

func postQuiet(u string, body []byte) (int, error) {
	req, _ := newWriteRequest(u, body)
	resp, err := writeClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func querySum(t *testing.T, u, q string) map[string]float64 {
	t.Helper()
	got, err := centertest.Query(u, q, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, s := range got {
		var f float64
		fmt.Sscan(fmt.Sprint(s.Value[1]), &f)
		out[s.Metric["req"]] = f
	}
	return out
}

var writeClient = &http.Client{Timeout: 30 * time.Second}

func newWriteRequest(u string, body []byte) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, u+"/api/v1/write", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	return req, nil
}

// TestCLISignals: the command line reloads on SIGHUP (keeping the running
// config when the new one is bad) and stops cleanly on SIGTERM, keeping
// what it stored.
func TestCLISignals(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "center.yml")
	writeFile(t, cfgFile, "storage: {path: data}\nevaluation_interval: 1s\nrule_files: [rules/*.yml]\n")
	writeFile(t, filepath.Join(dir, "rules", "a.yml"), "groups:\n- name: first\n  rules:\n  - record: job:one\n    expr: vector(1)\n")
	ch := startChild(t, cfgFile)
	groups := func() string {
		_, r := centertest.API(t, ch.url, "/api/v1/rules", nil)
		var d struct {
			Groups []struct {
				Name string `json:"name"`
			} `json:"groups"`
		}
		_ = json.Unmarshal(r.Data, &d)
		var names []string
		for _, g := range d.Groups {
			names = append(names, g.Name)
		}
		return strings.Join(names, ",")
	}
	if g := groups(); g != "first" {
		t.Fatalf("groups %q", g)
	}
	// A bad config on SIGHUP: refused, the old one runs on.
	writeFile(t, cfgFile, "storage: {path: data}\nrule_files: [rules/*.yml]\nbogus: 1\n")
	writeFile(t, filepath.Join(dir, "rules", "a.yml"), "groups:\n- name: second\n  rules:\n  - record: job:two\n    expr: vector(2)\n")
	if err := ch.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(ch.url + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `imwatch_center_config_reloads_total{result="failure"} 1`) {
			return fmt.Errorf("no failed reload yet")
		}
		return nil
	})
	if g := groups(); g != "first" {
		t.Fatalf("groups after a bad reload %q", g)
	}
	// A good one: swapped in.
	writeFile(t, cfgFile, "storage: {path: data}\nevaluation_interval: 1s\nrule_files: [rules/*.yml]\n")
	if err := ch.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		if g := groups(); g != "second" {
			return fmt.Errorf("groups %q", g)
		}
		return nil
	})
	body := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("kept_over_restart", time.Now(), 42)}})
	if code, msg := centertest.PostWrite(t, ch.url, body); code != 204 {
		t.Fatalf("write: %d %s", code, msg)
	}
	// SIGTERM: a clean stop, exit status 0.
	if err := ch.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ch.exit:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	ch = startChild(t, cfgFile)
	got, err := centertest.Query(ch.url, "kept_over_restart", time.Time{})
	if err != nil || len(got) != 1 {
		t.Errorf("after restart: %v %v", got, err)
	}
}
