package center_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func series(name string, t time.Time, v float64, kv ...string) prompb.TimeSeries {
	ls := []prompb.Label{{Name: "__name__", Value: name}}
	for i := 0; i+1 < len(kv); i += 2 {
		ls = append(ls, prompb.Label{Name: kv[i], Value: kv[i+1]})
	}
	return prompb.TimeSeries{Labels: ls, Samples: []prompb.Sample{{Timestamp: t.UnixMilli(), Value: v}}}
}

func TestRemoteWriteBadInput(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Receiver.MaxBodySize = 64 << 10
	cfg.Receiver.MaxDecodedSize = 256 << 10
	cfg.Receiver.MaxSamplesPerWrite = 1000
	c := centertest.Start(t, cfg)
	now := time.Now()

	good := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("ok_metric", now, 1)}})
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = byte(i*7919) ^ byte(i>>8) // incompressible
	}
	many := &prompb.WriteRequest{}
	for i := 0; i < 1001; i++ {
		many.Timeseries = append(many.Timeseries, series("many", now, float64(i), "i", fmt.Sprint(i)))
	}
	inflated := make([]byte, 300<<10) // compresses to almost nothing

	type tc struct {
		name    string
		body    []byte
		header  []string
		code    int
		message string
	}
	for _, c2 := range []tc{
		{"good", good, nil, 204, ""},
		{"not snappy", []byte("hello, this is not snappy"), nil, 400, "snappy"},
		{"snappy but not protobuf", snappy.Encode(nil, []byte{0x0a, 0x7f, 0x01}), nil, 400, "decode prometheus.WriteRequest"},
		{"empty body", nil, nil, 400, "snappy"},
		{"body too large", big, nil, 413, "max_body_size"},
		{"decoded too large", snappy.Encode(nil, inflated), nil, 413, "max_decoded_size"},
		{"too many samples", centertest.WriteRequest(t, many), nil, 413, "max_samples_per_write"},
		{"remote write 2.0", good, []string{"Content-Type", "application/x-protobuf;proto=io.prometheus.write.v2.Request"}, 415, "remote write 1.0"},
		{"gzip", good, []string{"Content-Encoding", "gzip"}, 415, "snappy"},
		{"no metric name", centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
			{Labels: []prompb.Label{{Name: "job", Value: "x"}}, Samples: []prompb.Sample{{Timestamp: now.UnixMilli(), Value: 1}}},
			series("stored_anyway", now, 2),
		}}), nil, 400, "no_metric_name 1"},
		{"duplicate label", centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
			series("dup", now, 1, "a", "1", "a", "2"),
		}}), nil, 400, "duplicate_label"},
	} {
		t.Run(c2.name, func(t *testing.T) {
			code, msg := centertest.PostWrite(t, c.URL(), c2.body, c2.header...)
			if code != c2.code || !strings.Contains(msg, c2.message) {
				t.Errorf("got %d %q, want %d with %q", code, msg, c2.code, c2.message)
			}
		})
	}

	// The valid series of a partly refused request are stored.
	if got, err := centertest.Query(c.URL(), "stored_anyway", time.Time{}); err != nil || len(got) != 1 {
		t.Errorf("stored_anyway: %v %v", got, err)
	}

	// Out of order and a different value for the same timestamp: refused, said why.
	old := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("ok_metric", now.Add(-time.Second), 1)}})
	if code, msg := centertest.PostWrite(t, c.URL(), old); code != 400 || !strings.Contains(msg, "out_of_order 1") {
		t.Errorf("out of order: %d %q", code, msg)
	}
	dup := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("ok_metric", now, 5)}})
	if code, msg := centertest.PostWrite(t, c.URL(), dup); code != 400 || !strings.Contains(msg, "duplicate_timestamp 1") {
		t.Errorf("duplicate: %d %q", code, msg)
	}
	// The same sample again is fine (a sender's retry).
	if code, msg := centertest.PostWrite(t, c.URL(), good); code != 204 {
		t.Errorf("retry of the same sample: %d %q", code, msg)
	}

	resp, err := http.Get(c.URL() + "/api/v1/write")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /api/v1/write: %s", resp.Status)
	}
}

func TestAuth(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := centertest.Config(t)
	cfg.Auth.BearerTokenFile = tokenFile
	if err := cfg.Resolve(dir); err != nil {
		t.Fatal(err)
	}
	c := centertest.Start(t, cfg)
	write := centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{series("authed", time.Now(), 1)}})

	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "Basic czNjcmV0"}} {
		if code, msg := centertest.PostWrite(t, c.URL(), write, h...); code != 401 || !strings.Contains(msg, "bearer token") {
			t.Errorf("write with %v: %d %s", h, code, msg)
		}
		code, r := centertest.API(t, c.URL(), "/api/v1/query", url.Values{"query": {"1"}}, h...)
		if code != 401 || r.Status != "error" || r.ErrorType != "unauthorized" {
			t.Errorf("query with %v: %d %+v", h, code, r)
		}
		for _, p := range []string{"/metrics", "/api/v1/labels", "/api/v1/rules"} {
			req, _ := http.NewRequest(http.MethodGet, c.URL()+p, nil)
			if len(h) == 2 {
				req.Header.Set(h[0], h[1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s with %v: %s", p, h, resp.Status)
			}
		}
	}
	ok := []string{"Authorization", "Bearer s3cret-token"}
	if code, msg := centertest.PostWrite(t, c.URL(), write, ok...); code != 204 {
		t.Errorf("write with the token: %d %s", code, msg)
	}
	if code, r := centertest.API(t, c.URL(), "/api/v1/query", url.Values{"query": {"authed"}}, ok...); code != 200 || r.Status != "success" {
		t.Errorf("query with the token: %d %+v", code, r)
	}
	for _, p := range []string{"/-/healthy", "/-/ready"} { // for load balancers: no token
		resp, err := http.Get(c.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s without a token: %s", p, resp.Status)
		}
	}
}

func TestScrape(t *testing.T) {
	var hits atomic.Int64
	stamp := time.Now().Add(-30 * time.Second).UnixMilli()
	exporter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE imwatch_test_gauge gauge\nimwatch_test_gauge{job=\"inner\",kind=\"a\"} %d\n", n)
		if n < 4 {
			fmt.Fprintln(w, `imwatch_test_vanishing 1`)
		}
		fmt.Fprintf(w, "imwatch_test_timestamped 7 %d\n", stamp)
	}))
	defer exporter.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	defer broken.Close()
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 50; i++ {
			fmt.Fprintf(w, "many{i=\"%d\"} 1\n", i)
		}
	}))
	defer big.Close()

	cfg := centertest.Config(t)
	cfg.Scrape.SampleLimit = 20
	cfg.Scrape.Targets = []config.Target{
		{URL: exporter.URL + "/metrics", Labels: map[string]string{"job": "exp", "team": "im"}},
		{URL: broken.URL + "/metrics"},
		{URL: big.URL + "/metrics", Labels: map[string]string{"job": "big"}},
	}
	c := centertest.Start(t, cfg)

	host := strings.TrimPrefix(exporter.URL, "http://")
	imtest.Eventually(t, 15*time.Second, func() error {
		got, err := centertest.Query(c.URL(), `imwatch_test_gauge`, time.Time{})
		if err != nil {
			return err
		}
		if len(got) != 1 {
			return fmt.Errorf("got %v", got)
		}
		m := got[0].Metric
		// Target labels win; the exposed job is kept as exported_job.
		if m["job"] != "exp" || m["exported_job"] != "inner" || m["instance"] != host || m["team"] != "im" || m["kind"] != "a" {
			return fmt.Errorf("labels %v", m)
		}
		return nil
	})
	check := func(q string, want string) {
		t.Helper()
		imtest.Eventually(t, 15*time.Second, func() error {
			got, err := centertest.Query(c.URL(), q, time.Time{})
			if err != nil {
				return err
			}
			if len(got) != 1 || (want != "" && fmt.Sprint(got[0].Value[1]) != want) {
				return fmt.Errorf("%s = %v, want %s", q, got, want)
			}
			return nil
		})
	}
	check(`up{job="exp"}`, "1")
	check(`up{job="imwatch"}`, "0") // the broken target, with the default job
	check(`up{job="big"}`, "0")     // over the sample limit
	check(`absent(many)`, "1")      // nothing of it was stored
	check(`scrape_samples_scraped{job="exp"} >= 2`, "")
	check(`scrape_duration_seconds{job="exp"} > 0`, "")
	// The vanishing series gets a staleness marker: gone at once, not after 5 minutes.
	imtest.Eventually(t, 15*time.Second, func() error {
		if hits.Load() < 5 {
			return errors.New("waiting for scrapes")
		}
		got, err := centertest.Query(c.URL(), "imwatch_test_vanishing", time.Time{})
		if err != nil || len(got) != 0 {
			return fmt.Errorf("vanishing still there: %v %v", got, err)
		}
		return nil
	})
	// Exposed timestamps are kept.
	got, err := centertest.Query(c.URL(), "imwatch_test_timestamped", time.UnixMilli(stamp))
	if err != nil || len(got) != 1 {
		t.Errorf("timestamped: %v %v", got, err)
	}

	// Targets added by code are scraped and survive a reload.
	extra := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "imwatch_test_extra 42") }))
	defer extra.Close()
	if err := c.AddTarget(config.Target{URL: extra.URL + "/metrics", Labels: map[string]string{"job": "extra"}}); err != nil {
		t.Fatal(err)
	}
	check(`imwatch_test_extra{job="extra"}`, "42")
	if err := c.ApplyConfig(c.Config()); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Targets()); n != 4 {
		t.Errorf("%d targets after reload, want 4", n)
	}
	c.RemoveTarget(extra.URL + "/metrics")
	check(`absent(up{job="extra"})`, "1")
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "center.yml")
	const goodConfig = "storage: {path: data}\nrule_files: [rules/*.yml]\nevaluation_interval: 1s\n"
	const goodRules = "groups:\n- name: first\n  rules:\n  - record: job:one\n    expr: vector(1)\n"
	writeFile(t, filepath.Join(dir, "rules", "a.yml"), goodRules)
	writeFile(t, cfgFile, goodConfig)
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = "127.0.0.1:0"
	c := centertest.Start(t, cfg)

	ruleNames := func() []string {
		_, r := centertest.API(t, c.URL(), "/api/v1/rules", nil)
		var d struct {
			Groups []struct {
				Name string `json:"name"`
			} `json:"groups"`
		}
		if err := jsonUnmarshal(r.Data, &d); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, g := range d.Groups {
			out = append(out, g.Name)
		}
		return out
	}
	reload := func() (int, string) {
		resp, err := http.Post(c.URL()+"/-/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if got := ruleNames(); fmt.Sprint(got) != "[first]" {
		t.Fatalf("rules %v", got)
	}

	type tc struct {
		name, config, rules string
		want                []string // in the answer
	}
	for _, c2 := range []tc{
		{"unknown key", "storage: {path: data}\nrule_files: [rules/*.yml]\nscrape:\n  intervall: 5s\n", goodRules, []string{"config line 4", `unknown key "intervall"`}},
		{"bad rule file", goodConfig, "groups:\n- name: second\n  rules:\n  - record: x\n    expr: sum(\n", []string{"rule file", "a.yml", "unclosed left parenthesis"}},
		{"storage path", "storage: {path: elsewhere}\nrule_files: [rules/*.yml]\n", goodRules, []string{"storage.path", "restart"}},
		{"bad value", "storage: {path: data}\nscrape: {interval: 1s, timeout: 2s}\n", goodRules, []string{"scrape.timeout"}},
	} {
		t.Run(c2.name, func(t *testing.T) {
			writeFile(t, cfgFile, c2.config)
			writeFile(t, filepath.Join(dir, "rules", "a.yml"), c2.rules)
			code, msg := reload()
			if code != 400 || !strings.Contains(msg, "the running config is kept") {
				t.Errorf("reload: %d %s", code, msg)
			}
			for _, w := range c2.want {
				if !strings.Contains(msg, w) {
					t.Errorf("answer %q lacks %q", msg, w)
				}
			}
			if got := ruleNames(); fmt.Sprint(got) != "[first]" {
				t.Errorf("old rules not kept: %v", got)
			}
		})
	}

	// A good config swaps in, rules included.
	writeFile(t, cfgFile, "storage: {path: data}\nrule_files: [rules/*.yml]\nevaluation_interval: 1s\n")
	writeFile(t, filepath.Join(dir, "rules", "a.yml"), "groups:\n- name: second\n  rules:\n  - record: job:two\n    expr: vector(2)\n")
	if code, msg := reload(); code != 200 {
		t.Fatalf("good reload: %d %s", code, msg)
	}
	if got := ruleNames(); fmt.Sprint(got) != "[second]" {
		t.Errorf("rules after reload: %v", got)
	}
	imtest.Eventually(t, 10*time.Second, func() error {
		got, err := centertest.Query(c.URL(), "job:two", time.Time{})
		if err != nil || len(got) != 1 {
			return fmt.Errorf("job:two: %v %v", got, err)
		}
		return nil
	})
	resp, err := http.Get(c.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`imwatch_center_config_reloads_total{result="failure"} 4`, `imwatch_center_config_reloads_total{result="success"} 1`, "imwatch_center_config_last_reload_successful 1"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestNewRefusesInvalidConfig(t *testing.T) {
	cfg := config.Default()
	cfg.Scrape.Interval = 0
	if _, err := center.New(cfg, imtest.Logger()); err == nil || !strings.Contains(err.Error(), "scrape.interval") {
		t.Errorf("New with a bad config: %v", err)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
