package center_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/promql"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// exporter serves metrics whose values change on every scrape.
func exporter(t *testing.T) *httptest.Server {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE imwatch_im_messages_total counter\n")
		for _, stage := range []string{"send", "store", "push"} {
			fmt.Fprintf(w, "imwatch_im_messages_total{service=\"logic\",stage=%q} %d\n", stage, i*int64(len(stage))*7)
		}
		fmt.Fprintf(w, "imwatch_test_ratio %g\n", 1/float64(i+2))
		fmt.Fprintf(w, "# TYPE imwatch_im_e2e_duration_seconds histogram\n")
		for j, le := range []string{"0.01", "0.1", "1", "+Inf"} {
			fmt.Fprintf(w, "imwatch_im_e2e_duration_seconds_bucket{le=%q} %d\n", le, i*int64(j+1))
		}
		fmt.Fprintf(w, "imwatch_im_e2e_duration_seconds_sum %g\nimwatch_im_e2e_duration_seconds_count %d\n", float64(i)*0.37, i*4)
	}))
	t.Cleanup(s.Close)
	return s
}

// rangeOf queries expr[window] at t and returns series -> "ts=value" list.
func rangeOf(baseURL, sel string, at time.Time) (map[string][]string, error) {
	got, err := centertest.Query(baseURL, sel, at)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, s := range got {
		keys := make([]string, 0, len(s.Metric))
		for k := range s.Metric {
			keys = append(keys, k+"="+s.Metric[k])
		}
		sort.Strings(keys)
		var vals []string
		for _, v := range s.Values {
			vals = append(vals, fmt.Sprintf("%v=%v", v[0], v[1]))
		}
		out[strings.Join(keys, ",")] = vals
	}
	return out, nil
}

// TestPrometheusRemoteWritesToCenter: a real Prometheus scrapes an
// exporter and remote-writes to the center; everything it scraped is in the
// center with the same timestamps and values.
func TestPrometheusRemoteWritesToCenter(t *testing.T) {
	c := centertest.Start(t, centertest.Config(t))
	exp := exporter(t)
	prom := centertest.StartPrometheus(t, fmt.Sprintf(`
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: exp
    static_configs: [{targets: [%q]}]
remote_write:
  - url: %s/api/v1/write
    queue_config: {batch_send_deadline: 500ms, max_samples_per_send: 100}
`, strings.TrimPrefix(exp.URL, "http://"), c.URL()))

	start := time.Now()
	// Wait for a few scrapes in Prometheus.
	imtest.Eventually(t, 30*time.Second, func() error {
		got, err := rangeOf(prom.URL, `imwatch_im_messages_total{stage="send"}[1m]`, time.Time{})
		if err != nil {
			return err
		}
		for _, v := range got {
			if len(v) >= 5 {
				return nil
			}
		}
		return fmt.Errorf("prometheus has %v", got)
	})
	at := time.Now().Add(-500 * time.Millisecond)
	sel := `{job="exp"}[` + strconv.Itoa(int(at.Sub(start).Seconds())+5) + `s]`
	want, err := rangeOf(prom.URL, sel, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 10 { // 3 counters, ratio, 6 histogram series, up and scrape_*
		t.Fatalf("prometheus has only %d series", len(want))
	}
	imtest.Eventually(t, 30*time.Second, func() error {
		got, err := rangeOf(c.URL(), sel, at)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, want) {
			for k, v := range want {
				if !reflect.DeepEqual(got[k], v) {
					return fmt.Errorf("series %s: center %v, prometheus %v", k, got[k], v)
				}
			}
			return fmt.Errorf("center has %d series, prometheus %d", len(got), len(want))
		}
		return nil
	})
}

// TestCenterRemoteWritesToPrometheus: the center writes onward to a real
// Prometheus's remote-write receiver and the series arrive with the same
// values.
func TestCenterRemoteWritesToPrometheus(t *testing.T) {
	prom := centertest.StartPrometheus(t, "global: {scrape_interval: 1h}\n")
	exp := exporter(t)
	cfg := centertest.Config(t)
	rw := config.DefaultRemoteWrite
	rw.URL = prom.URL + "/api/v1/write"
	rw.BatchSendDeadline = config.Duration(200 * time.Millisecond)
	cfg.RemoteWrite = []config.RemoteWrite{rw}
	cfg.Scrape.Targets = []config.Target{{URL: exp.URL + "/metrics", Labels: map[string]string{"job": "exp"}}}
	c := centertest.Start(t, cfg)

	// Also data that came in by remote write is passed on.
	now := time.Now()
	body := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		series("imwatch_test_pushed", now, 3.25, "via", "rw"),
	}})
	if code, msg := centertest.PostWrite(t, c.URL(), body); code != 204 {
		t.Fatalf("write: %d %s", code, msg)
	}
	start := time.Now()
	imtest.Eventually(t, 30*time.Second, func() error {
		got, err := rangeOf(c.URL(), `imwatch_im_messages_total{stage="send"}[1m]`, time.Time{})
		if err != nil {
			return err
		}
		for _, v := range got {
			if len(v) >= 4 {
				return nil
			}
		}
		return fmt.Errorf("center has %v", got)
	})
	at := time.Now().Add(-time.Second)
	for _, sel := range []string{
		`{job="exp"}[` + strconv.Itoa(int(at.Sub(start).Seconds())+10) + `s]`,
		`imwatch_test_pushed[1m]`,
	} {
		want, err := rangeOf(c.URL(), sel, at)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 {
			t.Fatalf("center has nothing for %s", sel)
		}
		imtest.Eventually(t, 30*time.Second, func() error {
			got, err := rangeOf(prom.URL, sel, at)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(got, want) {
				return fmt.Errorf("%s:\nprometheus %v\ncenter     %v", sel, got, want)
			}
			return nil
		})
	}
}

// TestCenterRemoteWriteRetries: when the destination is down the queue
// keeps the samples (bounded) and sends them once it is back.
func TestCenterRemoteWriteRetries(t *testing.T) {
	var up atomic.Bool
	var got atomic.Int64
	var mu sync.Mutex
	seen := map[int64]bool{}
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var req prompb.WriteRequest
		b, _ := io.ReadAll(r.Body)
		if err := unsnappy(b, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		for _, ts := range req.Timeseries {
			for _, s := range ts.Samples {
				for _, l := range ts.Labels {
					if l.Name == "__name__" && l.Value == "imwatch_test_retry" {
						seen[s.Timestamp] = true
					}
				}
			}
			got.Add(int64(len(ts.Samples)))
		}
		mu.Unlock()
		w.WriteHeader(204)
	}))
	defer dest.Close()
	cfg := centertest.Config(t)
	rw := config.DefaultRemoteWrite
	rw.URL = dest.URL
	rw.BatchSendDeadline = config.Duration(100 * time.Millisecond)
	rw.MaxBackoff = config.Duration(200 * time.Millisecond)
	cfg.RemoteWrite = []config.RemoteWrite{rw}
	c := centertest.Start(t, cfg)
	base := time.Now().Add(-time.Minute)
	for i := 0; i < 50; i++ {
		body := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("imwatch_test_retry", base.Add(time.Duration(i)*time.Second), float64(i))}})
		if code, msg := centertest.PostWrite(t, c.URL(), body); code != 204 {
			t.Fatalf("write %d: %d %s", i, code, msg)
		}
	}
	time.Sleep(500 * time.Millisecond) // a few failed attempts
	if got.Load() != 0 {
		t.Fatalf("sent while down")
	}
	up.Store(true)
	imtest.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 50 {
			return fmt.Errorf("destination has %d of 50 samples", len(seen))
		}
		return nil
	})
}

// TestPromtoolAgainstCenter: promtool query instant and range against the
// center give what evaluating the same PromQL directly on its store gives.
func TestPromtoolAgainstCenter(t *testing.T) {
	promtool := imtest.RequireBinary(t, "promtool", "prometheus")
	c := centertest.Start(t, centertest.Config(t))
	base := time.Now().Add(-11 * time.Minute).Truncate(time.Second)
	if code, msg := centertest.PostWrite(t, c.URL(), centertest.WriteRequest(t, testData(base))); code != 204 {
		t.Fatalf("write: %d %s", code, msg)
	}
	exprs := []string{
		`imwatch_im_requests_total`,
		`sum by (instance) (rate(imwatch_im_requests_total[1m]))`,
		`temperature`,
		`tiny or huge`,
		`topk(2, imwatch_im_requests_total) * 2`,
		`histogram_quantile(0.9, sum by (le) (rate(imwatch_im_requests_total[5m])))`,
		`count(imwatch_im_requests_total)`,
	}
	at := base.Add(5*time.Minute + 500*time.Millisecond)
	for _, e := range exprs {
		t.Run("instant "+e, func(t *testing.T) {
			out, err := exec.Command(promtool, "query", "instant", "-o", "json", "--time", at.Format(time.RFC3339Nano), c.URL(), e).CombinedOutput()
			if err != nil {
				t.Fatalf("promtool: %v: %s", err, out)
			}
			got := parsePromtool(t, out)
			want := direct(t, c, e, at, at, 0)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("promtool %v\ndirect  %v", got, want)
			}
		})
		t.Run("range "+e, func(t *testing.T) {
			start, end := base.Add(time.Minute), base.Add(9*time.Minute)
			out, err := exec.Command(promtool, "query", "range", "-o", "json", "--start", start.Format(time.RFC3339), "--end", end.Format(time.RFC3339), "--step", "20s", c.URL(), e).CombinedOutput()
			if err != nil {
				t.Fatalf("promtool: %v: %s", err, out)
			}
			got := parsePromtool(t, out)
			want := direct(t, c, e, start, end, 20*time.Second)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("promtool %v\ndirect  %v", got, want)
			}
		})
	}
	// promtool against bad PromQL says what is wrong.
	out, err := exec.Command(promtool, "query", "instant", c.URL(), "sum(").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad_data") {
		t.Errorf("promtool with bad PromQL: %v %s", err, out)
	}
}

// point is a sample as "t=value" with the value's exact float bits.
type point string

func mkPoint(tms int64, v float64) point {
	if math.IsNaN(v) {
		return point(fmt.Sprintf("%d=NaN", tms))
	}
	return point(fmt.Sprintf("%d=%x", tms, math.Float64bits(v)))
}

func labelKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// parsePromtool reads promtool's -o json output (client_golang's model).
func parsePromtool(t *testing.T, out []byte) map[string][]point {
	t.Helper()
	var series []struct {
		Metric map[string]string `json:"metric"`
		Value  []any             `json:"value"`
		Values [][]any           `json:"values"`
	}
	if err := json.Unmarshal(out, &series); err != nil {
		t.Fatalf("promtool output: %v: %s", err, out)
	}
	res := map[string][]point{}
	for _, s := range series {
		vals := s.Values
		if s.Value != nil {
			vals = [][]any{s.Value}
		}
		var pts []point
		for _, v := range vals {
			tsec := v[0].(float64)
			f, err := strconv.ParseFloat(v[1].(string), 64)
			if err != nil {
				t.Fatalf("value %v: %v", v[1], err)
			}
			pts = append(pts, mkPoint(int64(math.Round(tsec*1000)), f))
		}
		res[labelKey(s.Metric)] = pts
	}
	return res
}

// direct evaluates expr with the center's engine on its store, in process.
func direct(t *testing.T, c interface {
	Queryable() promstorageQueryable
	QueryEngine() promql.QueryEngine
}, expr string, start, end time.Time, step time.Duration) map[string][]point {
	t.Helper()
	var q promql.Query
	var err error
	if step == 0 {
		q, err = c.QueryEngine().NewInstantQuery(context.Background(), c.Queryable(), nil, expr, start)
	} else {
		q, err = c.QueryEngine().NewRangeQuery(context.Background(), c.Queryable(), nil, expr, start, end, step)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := q.Exec(context.Background())
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	res := map[string][]point{}
	switch v := r.Value.(type) {
	case promql.Vector:
		for _, s := range v {
			res[labelKey(s.Metric.Map())] = []point{mkPoint(s.T, s.F)}
		}
	case promql.Matrix:
		for _, s := range v {
			var pts []point
			for _, p := range s.Floats {
				pts = append(pts, mkPoint(p.T, p.F))
			}
			res[labelKey(s.Metric.Map())] = pts
		}
	case promql.Scalar:
		res[""] = []point{mkPoint(v.T, v.V)}
	}
	return res
}

type promstorageQueryable = promstorage.Queryable

func unsnappy(b []byte, req *prompb.WriteRequest) error {
	d, err := snappy.Decode(nil, b)
	if err != nil {
		return err
	}
	return req.Unmarshal(d)
}
