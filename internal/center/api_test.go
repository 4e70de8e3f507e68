package center_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// testData is a small, awkward data set: fractional-millisecond
// timestamps, special floats, staleness, and label values JSON must escape.
func testData(base time.Time) *prompb.WriteRequest {
	ms := base.UnixMilli()
	lbl := func(kv ...string) []prompb.Label {
		var out []prompb.Label
		for i := 0; i < len(kv); i += 2 {
			out = append(out, prompb.Label{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	var req prompb.WriteRequest
	add := func(ls []prompb.Label, f func(i int) (int64, float64), n int) {
		ts := prompb.TimeSeries{Labels: ls}
		for i := 0; i < n; i++ {
			t, v := f(i)
			ts.Samples = append(ts.Samples, prompb.Sample{Timestamp: t, Value: v})
		}
		req.Timeseries = append(req.Timeseries, ts)
	}
	for _, inst := range []string{"gw-1:9100", "gw-2:9100", `we"ird<&>é`} {
		add(lbl("__name__", "imwatch_im_requests_total", "instance", inst, "job", "im", "operation", "send"),
			func(i int) (int64, float64) { return ms + int64(i)*5000 + 7, float64(i * i * 3) }, 120)
	}
	add(lbl("__name__", "temperature", "job", "x", "room", "a"), func(i int) (int64, float64) {
		switch i {
		case 10:
			return ms + int64(i)*5000, math.Inf(1)
		case 11:
			return ms + int64(i)*5000, math.Inf(-1)
		case 12:
			return ms + int64(i)*5000, math.NaN()
		case 60:
			return ms + int64(i)*5000, math.Float64frombits(value.StaleNaN)
		}
		return ms + int64(i)*5000 + 123, 20.5 + float64(i%7)*0.1 + 1e-9*float64(i)
	}, 120)
	add(lbl("__name__", "tiny", "job", "x"), func(i int) (int64, float64) { return ms + int64(i)*5000 + 999, 1e-7 * float64(i) }, 120)
	add(lbl("__name__", "huge", "job", "x"), func(i int) (int64, float64) { return ms + int64(i)*5000 + 1, 1e22 * float64(i+1) }, 120)
	return &req
}

// TestAPIMatchesPrometheus writes the same data into the center and into a
// real Prometheus 2.42 and checks that the answers of the query API are the
// same bytes, and that errors have the same type and status.
func TestAPIMatchesPrometheus(t *testing.T) {
	prom := centertest.StartPrometheus(t, "global: {scrape_interval: 1h}\n")
	c := centertest.Start(t, centertest.Config(t))

	base := time.Now().Add(-11 * time.Minute).Truncate(time.Second)
	body := centertest.WriteRequest(t, testData(base))
	for _, u := range []string{prom.URL, c.URL()} {
		if code, msg := centertest.PostWrite(t, u, body); code/100 != 2 {
			t.Fatalf("write to %s: %d %s", u, code, msg)
		}
	}
	ts := func(d time.Duration) string {
		return strconv.FormatFloat(float64(base.Add(d).UnixMilli())/1000, 'f', 3, 64)
	}
	type tc struct {
		name   string
		path   string
		params url.Values
		// errorOnly compares only the status code and errorType (the
		// wording of parse errors moved between Prometheus versions).
		errorOnly bool
	}
	cases := []tc{
		{"vector", "/api/v1/query", url.Values{"query": {"imwatch_im_requests_total"}, "time": {ts(5 * time.Minute)}}, false},
		{"vector rate", "/api/v1/query", url.Values{"query": {`sum by (instance) (rate(imwatch_im_requests_total[1m]))`}, "time": {ts(6 * time.Minute)}}, false},
		{"special floats", "/api/v1/query", url.Values{"query": {"temperature"}, "time": {ts(55 * time.Second)}}, false},
		{"nan", "/api/v1/query", url.Values{"query": {"temperature"}, "time": {ts(60*time.Second + 500*time.Millisecond)}}, false},
		{"stale", "/api/v1/query", url.Values{"query": {"temperature"}, "time": {ts(301 * time.Second)}}, false},
		{"tiny and huge", "/api/v1/query", url.Values{"query": {"tiny or huge"}, "time": {ts(100 * time.Second)}}, false},
		{"scalar", "/api/v1/query", url.Values{"query": {"1.5 * 2"}, "time": {ts(0)}}, false},
		{"string", "/api/v1/query", url.Values{"query": {`"hello <world>"`}, "time": {ts(0)}}, false},
		{"empty", "/api/v1/query", url.Values{"query": {"nothing_here"}, "time": {ts(0)}}, false},
		{"rfc3339 time", "/api/v1/query", url.Values{"query": {"huge"}, "time": {base.Add(time.Minute).UTC().Format(time.RFC3339Nano)}}, false},
		// Not on a sample's timestamp: Prometheus 3's engine, which the center
		// embeds, leaves range selectors open on the left; Prometheus 2 closed.
		{"matrix selector", "/api/v1/query", url.Values{"query": {"temperature[1m]"}, "time": {ts(2*time.Minute + 10*time.Millisecond)}}, false},
		{"range", "/api/v1/query_range", url.Values{"query": {"rate(imwatch_im_requests_total[1m])"}, "start": {ts(2 * time.Minute)}, "end": {ts(8 * time.Minute)}, "step": {"15s"}}, false},
		{"range through staleness", "/api/v1/query_range", url.Values{"query": {"temperature"}, "start": {ts(0)}, "end": {ts(10 * time.Minute)}, "step": {"7.5"}}, false},
		{"range histogram_quantile", "/api/v1/query_range", url.Values{"query": {"quantile_over_time(0.9, tiny[2m])"}, "start": {ts(0)}, "end": {ts(10 * time.Minute)}, "step": {"1m"}}, false},
		{"series", "/api/v1/series", url.Values{"match[]": {`{job="im"}`, "tiny"}}, false},
		{"series range", "/api/v1/series", url.Values{"match[]": {`{__name__=~".+"}`}, "start": {ts(0)}, "end": {ts(time.Minute)}}, false},
		{"labels", "/api/v1/labels", nil, false},
		{"labels match", "/api/v1/labels", url.Values{"match[]": {"temperature"}}, false},
		{"label values", "/api/v1/label/instance/values", nil, false},
		{"label values name", "/api/v1/label/__name__/values", nil, false},
		{"label values match", "/api/v1/label/job/values", url.Values{"match[]": {"tiny"}}, false},
		{"label values none", "/api/v1/label/nope/values", nil, false},

		{"bad promql", "/api/v1/query", url.Values{"query": {"sum(rate(x[5m])"}}, true},
		{"bad function", "/api/v1/query", url.Values{"query": {"nosuchfunc(up)"}}, true},
		{"no query", "/api/v1/query", nil, true},
		{"bad time", "/api/v1/query", url.Values{"query": {"up"}, "time": {"yesterday"}}, false},
		{"bad step", "/api/v1/query_range", url.Values{"query": {"up"}, "start": {"1"}, "end": {"2"}, "step": {"0"}}, false},
		{"too many points", "/api/v1/query_range", url.Values{"query": {"up"}, "start": {"0"}, "end": {"100000"}, "step": {"1"}}, false},
		{"end before start", "/api/v1/query_range", url.Values{"query": {"up"}, "start": {"10"}, "end": {"2"}, "step": {"1"}}, false},
		{"exec error", "/api/v1/query", url.Values{"query": {`label_replace(tiny, "x", "$1", "job", "(")`}, "time": {ts(0)}}, true},
		{"series without match", "/api/v1/series", nil, false},
		{"series bad match", "/api/v1/series", url.Values{"match[]": {"{"}}, true},
		{"series empty matcher", "/api/v1/series", url.Values{"match[]": {`{job=""}`}}, false},
	}
	for _, c2 := range cases {
		t.Run(c2.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				pc, pb := call(t, method, prom.URL+c2.path, c2.params)
				cc, cb := call(t, method, c.URL()+c2.path, c2.params)
				if pc != cc {
					t.Errorf("%s: status %d, Prometheus %d\ncenter:     %s\nprometheus: %s", method, cc, pc, cb, pb)
					continue
				}
				if c2.errorOnly {
					var pr, cr centertest.Response
					_ = json.Unmarshal([]byte(pb), &pr)
					_ = json.Unmarshal([]byte(cb), &cr)
					if pr.Status != cr.Status || pr.ErrorType != cr.ErrorType || cr.Error == "" {
						t.Errorf("%s: center %s, Prometheus %s", method, cb, pb)
					}
					continue
				}
				if pb != cb {
					t.Errorf("%s: answers differ\ncenter:     %s\nprometheus: %s", method, cb, pb)
				}
			}
		})
	}
}

func call(t *testing.T, method, u string, params url.Values) (int, string) {
	t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodGet {
		resp, err = http.Get(u + "?" + params.Encode())
	} else {
		resp, err = http.PostForm(u, params)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestHealthReadyMetrics(t *testing.T) {
	c := centertest.Start(t, centertest.Config(t))
	for path, want := range map[string]string{"/-/healthy": "Healthy", "/-/ready": "Ready", "/metrics": "imwatch_center_remote_write_samples_total"} {
		resp, err := http.Get(c.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %s %.200s", path, resp.Status, b)
		}
	}
	// The engine's own metrics are there too.
	imtest.Eventually(t, 5*time.Second, func() error {
		if _, err := centertest.Query(c.URL(), "up", time.Time{}); err != nil {
			return err
		}
		resp, err := http.Get(c.URL() + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), "prometheus_engine_queries") {
			return fmt.Errorf("no engine metrics")
		}
		return nil
	})
}
