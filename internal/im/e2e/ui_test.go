package e2e

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/ui/uitest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

const evilLabel = `<img src=x onerror=alert(1)>`

// uiRules: one alert always firing and one always pending, with HTML in a
// label and in an annotation, loaded by `imwatch up` from DATA/rules/.
const uiRules = `groups:
  - name: ui-test
    interval: 1s
    rules:
      - alert: UITestFiring
        expr: vector(1)
        labels: {severity: warning, evil: "<img src=x onerror=alert(1)>"}
        annotations: {summary: "<script>alert(2)</script> fires for the UI test"}
      - alert: UITestPending
        expr: vector(1)
        for: 1h
        labels: {severity: info}
`

// TestUIAgainstUp: every page of the web UI, in a real headless Chromium
// (and then in Firefox), against a running `imwatch up` with some chat
// traffic: no console errors
// or uncaught exceptions, charts that hold data where the data exists
// today, a screenshot of each page kept (IMWATCH_ARTIFACTS), and labels
// holding HTML shown as text, with no dialog opening.
func TestUIAgainstUp(t *testing.T) {
	b := uitest.Start(t) // skips (or fails under IMWATCH_INTEGRATION=1) without chromium
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, "rules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "rules", "ui-test.yml"), []byte(uiRules), 0o644); err != nil {
		t.Fatal(err)
	}
	up := startUp(t, data)
	out := up.stdout()
	center := regexp.MustCompile(`center: +(http://\S+)`).FindStringSubmatch(out)
	gws := regexp.MustCompile(`gateway \d: +(ws://\S+)`).FindAllStringSubmatch(out, -1)
	if center == nil || len(gws) != 2 {
		t.Fatalf("no center or gateway addresses in the output of imwatch up:\n%s", out)
	}
	base := center[1]

	// Traffic: users chatting through both gateways for a while.
	bench := startProc(t, "bench", "im", "bench", "--data", data, "--gateway", gws[0][1]+","+gws[1][1],
		"--users", "6", "--rate", "30", "--duration", "20s", "--json")
	// A series whose label holds HTML, by remote write.
	now := time.Now().UnixMilli()
	code, msg := centertest.PostWrite(t, base, centertest.WriteRequest(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{
		Labels:  []prompb.Label{{Name: "__name__", Value: "imwatch_ui_escape_test"}, {Name: "evil", Value: evilLabel}},
		Samples: []prompb.Sample{{Timestamp: now - 20000, Value: 1}, {Timestamp: now - 10000, Value: 2}, {Timestamp: now, Value: 3}},
	}}}))
	if code != 204 {
		t.Fatalf("remote write: %d %s", code, msg)
	}
	if c := bench.wait(2 * time.Minute); c != 0 {
		t.Fatalf("imwatch im bench exited %d; log:\n%s", c, bench.logTail(20))
	}
	// Wait until the center has rates of the traffic, the host and the alert.
	for _, q := range []string{
		`sum(rate(imwatch_im_messages_total{stage="sent"}[1m])) > 0`,
		`sum(rate(imwatch_im_requests_total[1m])) > 0`,
		`sum(rate(node_cpu_seconds_total[1m])) > 0`,
		`ALERTS{alertname="UITestFiring",alertstate="firing"}`,
	} {
		imtest.Eventually(t, 60*time.Second, func() error {
			s, err := centertest.Query(base, q, time.Now())
			if err != nil {
				return err
			}
			if len(s) == 0 {
				return fmt.Errorf("%s: empty", q)
			}
			return nil
		})
	}

	// What the pages can show depends on what this build has: the trace
	// store (issue 5) and a prober in imwatch up (issue 6).
	var feats struct {
		Traces bool `json:"traces"`
	}
	if err := getJSON(base+"/ui/features.json", &feats); err != nil {
		t.Fatal(err)
	}
	probes, err := centertest.Query(base, "probe_success", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	overviewTexts := []string{"UITestFiring", evilLabel}
	tracesTexts := []string{"Search the traces"}
	if !feats.Traces {
		overviewTexts = append(overviewTexts, "No trace store yet")
		tracesTexts = []string{"No trace store yet"}
	}
	overviewCharts := []string{"Message throughput by stage", "Error ratio by service", "Message end-to-end latency p50 / p99"}
	probeCharts, probeTexts := []string{"Availability", "Probe messages", "End-to-end latency p50 / p99"}, []string(nil)
	if len(probes) == 0 {
		probeCharts, probeTexts = nil, []string{"no probe results"}
	} else {
		overviewCharts = append(overviewCharts, "Probe availability by target and location", "Probe end-to-end latency p50 / p99")
	}

	dir := uitest.ArtifactsDir(t)
	range5m := "range=5m"
	for _, tc := range []struct {
		page, query string
		charts      []string // charts that must hold data
		texts       []string // shown as text somewhere on the page
	}{
		{"overview", range5m, overviewCharts, overviewTexts},
		{"services", range5m, []string{"Requests per instance", "Requests, cluster, by operation", "Error ratio per instance", "Stage duration p99 per instance"}, nil},
		{"hosts", range5m, []string{"CPU busy by mode", "Memory", "Load average", "Network bandwidth", "Network packets"}, nil},
		{"probes", range5m, probeCharts, probeTexts},
		{"traces", range5m, nil, tracesTexts},
		{"alerts", range5m, []string{"Active alerts over time"}, []string{"UITestFiring", "UITestPending", evilLabel, "<script>alert(2)</script> fires for the UI test"}},
		{"explore", range5m + "&q=" + url.QueryEscape("imwatch_ui_escape_test"), []string{"imwatch_ui_escape_test"}, []string{evilLabel}},
	} {
		t.Run(tc.page, func(t *testing.T) {
			b.ResetErrors()
			b.Open(base+"/#/"+tc.page+"?"+tc.query, tc.page, 60*time.Second)
			b.Screenshot(dir, tc.page)
			if errs := b.Errors(); len(errs) > 0 {
				t.Errorf("page errors:\n%s", strings.Join(errs, "\n"))
			}
			for _, title := range tc.charts {
				state := uitest.Eval[string](b, fmt.Sprintf(`(() => {
					const c = [...document.querySelectorAll('.chart')].find(c => c.querySelector('h3').textContent === %q);
					return c ? c.dataset.state + ' ' + c.dataset.points + ' ' + c.querySelector('.plot').textContent : 'missing';
				})()`, title))
				if !strings.HasPrefix(state, "data ") {
					t.Errorf("chart %q holds no data: %s", title, state)
				}
			}
			body := uitest.Eval[string](b, `document.body.innerText`)
			for _, x := range tc.texts {
				if !strings.Contains(body, x) {
					t.Errorf("the page does not show %q as text", x)
				}
			}
			if n := uitest.Eval[int](b, `document.querySelectorAll('img, script:not([src])').length`); n != 0 {
				t.Errorf("%d img or inline script elements: data was parsed as HTML", n)
			}
		})
	}
	// The same pages in Firefox.
	ff := uitest.StartFirefox(t)
	for _, page := range []string{"overview", "services", "hosts", "probes", "traces", "alerts", "explore"} {
		q := range5m
		if page == "explore" {
			q += "&q=" + url.QueryEscape("imwatch_ui_escape_test")
		}
		ff.Open(base+"/#/"+page+"?"+q, page, 60*time.Second)
		var n int
		ff.Eval(`document.querySelectorAll('.chart[data-state=data]').length`, &n)
		if page != "probes" && page != "traces" && n == 0 {
			t.Errorf("firefox %s: no chart holds data", page)
		}
		ff.Eval(`document.querySelectorAll('img, script:not([src])').length`, &n)
		if n != 0 {
			t.Errorf("firefox %s: %d img or inline script elements", page, n)
		}
		ff.Screenshot(dir, "firefox-"+page)
	}
	if errs := ff.Errors(); len(errs) > 0 {
		t.Errorf("firefox: page errors:\n%s", strings.Join(errs, "\n"))
	}

	// The page's quantiles (computed in the browser from the buckets) are
	// the center's histogram_quantile.
	b.Open(base+"/#/overview?range=5m", "overview", 60*time.Second)
	got := uitest.Eval[[]float64](b, `Promise.all([import('/ui/js/api.js'), import('/ui/js/stats.js')]).then(async ([api, st]) => {
		const sel = 'sum by (le) (rate(imwatch_im_e2e_duration_seconds_bucket[1m]))';
		const t = Date.now() - 5000;
		const buckets = (await api.prom.query(sel, t)).result.map(x => [x.metric.le === '+Inf' ? Infinity : Number(x.metric.le), Number(x.value[1])]);
		const out = [];
		for (const q of [0.5, 0.9, 0.99]) {
			out.push(st.bucketQuantile(q, buckets), api.first(await api.prom.query('histogram_quantile(' + q + ', ' + sel + ')', t)));
		}
		return out;
	})`)
	for i := 0; i+1 < len(got); i += 2 {
		if d := got[i] - got[i+1]; d > 1e-9 || d < -1e-9 || got[i] <= 0 {
			t.Errorf("quantile %d: the page computes %v, the center %v", i/2, got[i], got[i+1])
		}
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("dialogs opened: %v", d)
	}
}
