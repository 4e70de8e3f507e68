package center_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
)

// TestMain lets the test binary run a center as a child process, so that a
// test can kill -9 it.
func TestMain(m *testing.M) {
	if file := os.Getenv("IMWATCH_CENTER_CHILD"); file != "" {
		os.Exit(runChildCenter(file))
	}
	os.Exit(m.Run())
}

func runChildCenter(file string) int {
	cfg, err := config.Load(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg.Listen = "127.0.0.1:0"
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := center.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := c.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("LISTEN %s\n", c.URL())
	select {} // until killed
}

type child struct {
	cmd *exec.Cmd
	url string
}

func startChild(t *testing.T, cfgFile string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IMWATCH_CENTER_CHILD="+cfgFile)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "LISTEN "); ok {
				lines <- u
			}
		}
	}()
	select {
	case u := <-lines:
		return &child{cmd: cmd, url: u}
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
			_ = ch.cmd.Wait()

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
