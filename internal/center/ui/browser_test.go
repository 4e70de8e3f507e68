package ui_test

// Unit-level browser tests: the UI in a real headless Chromium against a
// small server that answers the center's APIs with canned JSON in the shapes
// of docs/center.md and of the contracts of the trace store and the probes
// (the trace API and /api/probes/failures are being built on another
// branch). The end-to-end tests against a running `imwatch up` are in
// internal/im/e2e/ui_test.go.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/imwatch/imwatch/internal/center/ui"
	"github.com/imwatch/imwatch/internal/center/ui/uitest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

var imtestEventually = imtest.Eventually

const evil = `<img src=x onerror=alert(1)>`

const (
	traceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	fanoutID = "0af7651916cd43dd8448eb211c80319c"
	probeTID = "5b8efff798038103d269b633813fc60c"
)

// fakeCenter serves the UI and canned API answers.
type fakeCenter struct {
	srv        *httptest.Server
	traceCalls atomic.Int64
	queries    atomic.Int64 // instant queries answered
	limits     atomic.Value // the last limit parameter of a range query

	faultMu sync.Mutex
	faults  []map[string]any // the fault API's list, newest added last
	posted  []map[string]any // bodies of POST /api/faults
}

func startFake(t *testing.T, withTraces bool) *fakeCenter {
	t.Helper()
	f := &fakeCenter{}
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	ok := func(w http.ResponseWriter, data any) { writeJSON(w, map[string]any{"status": "success", "data": data}) }
	metric := map[string]string{"__name__": "imwatch_im_requests_total", "service": "gateway", "instance": "gw-1", "stage": "sent",
		"target": "local-im", "location": "lab-1", "evil": evil}
	// Every query the pages send must be PromQL the center accepts: the fake
	// parses it with Prometheus's parser and refuses it as the center would.
	promql := parser.NewParser(parser.Options{})
	valid := func(w http.ResponseWriter, r *http.Request) bool {
		if _, err := promql.ParseExpr(r.FormValue("query")); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			writeJSON(w, map[string]any{"status": "error", "errorType": "bad_data", "error": err.Error()})
			return false
		}
		return true
	}
	// Without the trace store there are no span metrics either.
	noSpans := func(r *http.Request) bool {
		q := r.FormValue("query")
		return !withTraces && (strings.Contains(q, "imwatch_service_graph_") || strings.Contains(q, "imwatch_span_"))
	}
	mux.HandleFunc("GET /api/v1/query_range", func(w http.ResponseWriter, r *http.Request) {
		if l := r.FormValue("limit"); l != "" {
			f.limits.Store(l)
		}
		if !valid(w, r) {
			return
		}
		if noSpans(r) {
			ok(w, map[string]any{"resultType": "matrix", "result": []any{}})
			return
		}
		start, _ := strconv.ParseFloat(r.FormValue("start"), 64)
		end, _ := strconv.ParseFloat(r.FormValue("end"), 64)
		step, _ := strconv.ParseFloat(r.FormValue("step"), 64)
		vals := func(scale float64) [][2]any {
			var out [][2]any
			for ts := start; ts <= end && step > 0; ts += step {
				out = append(out, [2]any{ts, strconv.FormatFloat(scale*(0.5+0.4*math.Sin(ts/600)), 'f', -1, 64)})
			}
			return out
		}
		if strings.Contains(r.FormValue("query"), "le)") { // buckets of a histogram
			var res []any
			for i, le := range []string{"0.01", "0.1", "1", "+Inf"} {
				m := map[string]string{"le": le, "target": "local-im", "location": "lab-1"}
				res = append(res, map[string]any{"metric": m, "values": vals([]float64{10, 60, 95, 100}[i])})
			}
			ok(w, map[string]any{"resultType": "matrix", "result": res})
			return
		}
		ok(w, map[string]any{"resultType": "matrix", "result": []any{map[string]any{"metric": metric, "values": vals(1)}}})
	})
	mux.HandleFunc("GET /api/v1/query", func(w http.ResponseWriter, r *http.Request) {
		f.queries.Add(1)
		if !valid(w, r) {
			return
		}
		if noSpans(r) {
			ok(w, map[string]any{"resultType": "vector", "result": []any{}})
			return
		}
		// Four gateway instances, the fourth one slow.
		perInstance := map[string][]string{
			"sum by (instance) (rate(imwatch_im_requests_total":           {"10", "11", "9", "10"},
			"histogram_quantile(0.99, sum by (instance, le)":              {"0.010", "0.011", "0.012", "0.2"},
			"(sum by (instance) (rate(imwatch_im_failures_total":          {"0", "0.001", "0", "0"},
			"max by (instance) (up and on (instance) group by (instance)": {"1", "1", "1", "1"},
		}
		for prefix, vals := range perInstance {
			if strings.HasPrefix(r.FormValue("query"), prefix) {
				var res []any
				for i, v := range vals {
					res = append(res, map[string]any{"metric": map[string]string{"instance": fmt.Sprintf("gw-%d", i+1)},
						"value": [2]any{float64(time.Now().Unix()), v}})
				}
				ok(w, map[string]any{"resultType": "vector", "result": res})
				return
			}
		}
		if strings.Contains(r.FormValue("query"), "imwatch_service_graph_") {
			var res []any
			for _, e := range [][3]string{{"imwatch-client", "gateway", "rpc"}, {"gateway", "logic", "messaging"},
				{"logic", "gateway", "messaging"}, {"gateway", "imwatch-client", "rpc"}, {"imwatch-probe", "gateway", "rpc"}} {
				res = append(res, map[string]any{"metric": map[string]string{"client": e[0], "server": e[1], "connection_type": e[2]},
					"value": [2]any{float64(time.Now().Unix()), "12.5"}})
			}
			ok(w, map[string]any{"resultType": "vector", "result": res})
			return
		}
		ok(w, map[string]any{"resultType": "vector", "result": []any{map[string]any{"metric": metric,
			"value": [2]any{float64(time.Now().Unix()), "0.5"}}}})
	})
	mux.HandleFunc("GET /api/v1/label/{name}/values", func(w http.ResponseWriter, r *http.Request) {
		ok(w, []string{evil, "gateway"})
	})
	alert := map[string]any{"labels": map[string]string{"alertname": "EvilAlert", "severity": "warning", "evil": evil},
		"annotations": map[string]string{"summary": evil}, "state": "firing", "activeAt": time.Now().Add(-time.Minute).Format(time.RFC3339Nano), "value": "1e+00"}
	mux.HandleFunc("GET /api/v1/alerts", func(w http.ResponseWriter, r *http.Request) { ok(w, map[string]any{"alerts": []any{alert}}) })
	mux.HandleFunc("GET /api/v1/rules", func(w http.ResponseWriter, r *http.Request) {
		ok(w, map[string]any{"groups": []any{map[string]any{"name": "g", "file": "x.yml", "rules": []any{map[string]any{
			"type": "alerting", "name": "EvilAlert", "query": `vector(1) > 0 # ` + evil, "duration": 0, "labels": map[string]string{"severity": "warning"},
			"health": "ok", "state": "firing", "alerts": []any{alert}}}}}})
	})
	if withTraces {
		mux.HandleFunc("GET /api/traces", func(w http.ResponseWriter, r *http.Request) {
			f.traceCalls.Add(1)
			var out []any
			if r.FormValue("msg_id") == "" || r.FormValue("msg_id") == "m-1" {
				out = append(out, contractTrace())
			}
			if r.FormValue("msg_id") == "" {
				out = append(out, fanoutTrace())
			}
			writeJSON(w, map[string]any{"traces": out})
		})
		mux.HandleFunc("GET /api/traces/{id}", func(w http.ResponseWriter, r *http.Request) {
			f.traceCalls.Add(1)
			switch r.PathValue("id") {
			case traceID:
				writeJSON(w, map[string]any{"traces": []any{contractTrace()}})
			case fanoutID:
				writeJSON(w, map[string]any{"traces": []any{fanoutTrace()}})
			case probeTID:
				writeJSON(w, map[string]any{"traces": []any{probeTrace()}})
			default:
				w.WriteHeader(http.StatusNotFound)
				writeJSON(w, map[string]any{"status": "error", "errorType": "not_found", "error": "trace not found"})
			}
		})
		mux.HandleFunc("GET /api/probes/failures", func(w http.ResponseWriter, r *http.Request) {
			f.traceCalls.Add(1)
			writeJSON(w, map[string]any{"failures": []any{map[string]any{
				"time": time.Now().Add(-30 * time.Second).Format(time.RFC3339Nano), "target": "local-im", "protocol": "imwatch",
				"location": "lab-1", "reason": "delivery_timeout", "message": "not delivered within 3s " + evil, "trace_id": probeTID,
			}}})
		})
	}
	if withTraces { // the fault API, in the shapes of docs/center.md
		now := time.Now()
		f.faults = []map[string]any{
			{"id": "f1-1", "kind": "drop", "hop": "gateway.receive", "instance": "gw-2", "percent": 100, "duration": "5m", "state": "active",
				"start": now.Add(-2 * time.Minute).Format(time.RFC3339Nano), "until": now.Add(3 * time.Minute).Format(time.RFC3339Nano), "applied": true},
			{"id": "f1-0", "kind": "stop", "instance": "logic-1", "duration": "1m", "state": "cleared",
				"start": now.Add(-20 * time.Minute).Format(time.RFC3339Nano), "until": now.Add(-19 * time.Minute).Format(time.RFC3339Nano),
				"end": now.Add(-19*time.Minute - 30*time.Second).Format(time.RFC3339Nano), "applied": false},
		}
		instances := []any{
			map[string]any{"name": "gw-1", "service": "gateway", "kinds": []string{"drop", "latency", "blackhole", "stop"}},
			map[string]any{"name": "gw-2", "service": "gateway", "kinds": []string{"drop", "latency", "blackhole", "stop"}},
			map[string]any{"name": "logic-1", "service": "logic", "kinds": []string{"drop", "latency", "stop"}},
		}
		mux.HandleFunc("GET /api/faults", func(w http.ResponseWriter, r *http.Request) {
			f.faultMu.Lock()
			defer f.faultMu.Unlock()
			writeJSON(w, map[string]any{"faults": f.faults, "instances": instances})
		})
		mux.HandleFunc("POST /api/faults", func(w http.ResponseWriter, r *http.Request) {
			var spec map[string]any
			if err := json.NewDecoder(r.Body).Decode(&spec); err != nil || r.Header.Get("Content-Type") != "application/json" {
				w.WriteHeader(http.StatusBadRequest)
				writeJSON(w, map[string]any{"status": "error", "errorType": "bad_data", "error": "bad body"})
				return
			}
			f.faultMu.Lock()
			defer f.faultMu.Unlock()
			f.posted = append(f.posted, spec)
			if spec["instance"] == "gw-1" && spec["kind"] == "blackhole" { // refused, with HTML in the reason
				w.WriteHeader(http.StatusConflict)
				writeJSON(w, map[string]any{"status": "error", "errorType": "conflict", "error": "fault conflicts " + evil})
				return
			}
			nf := map[string]any{"id": fmt.Sprintf("f1-%d", len(f.faults)+1), "state": "active", "applied": false,
				"start": time.Now().Format(time.RFC3339Nano), "until": time.Now().Add(2 * time.Minute).Format(time.RFC3339Nano)}
			for k, v := range spec {
				nf[k] = v
			}
			f.faults = append([]map[string]any{nf}, f.faults...)
			w.WriteHeader(http.StatusCreated)
			writeJSON(w, map[string]any{"fault": nf})
		})
		mux.HandleFunc("DELETE /api/faults/{id}", func(w http.ResponseWriter, r *http.Request) {
			f.faultMu.Lock()
			defer f.faultMu.Unlock()
			for _, x := range f.faults {
				if x["id"] == r.PathValue("id") {
					x["state"], x["end"] = "cleared", time.Now().Format(time.RFC3339Nano)
					writeJSON(w, map[string]any{"fault": x})
					return
				}
			}
			w.WriteHeader(http.StatusNotFound)
			writeJSON(w, map[string]any{"status": "error", "errorType": "not_found", "error": "no such fault"})
		})
	}
	h, err := ui.New(ui.Options{Has: func(m, p string) bool {
		_, pat := mux.Handler(httptest.NewRequest(m, p, nil))
		return pat != ""
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.Register(mux)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// span is one span in the JSON of the trace API.
func span(id, parent, name, svc, inst string, start time.Time, ms float64, status string, attrs map[string]any) map[string]any {
	return map[string]any{"trace_id": traceID, "span_id": id, "parent_span_id": parent, "name": name, "service": svc, "instance": inst,
		"start": start.Format(time.RFC3339Nano), "duration_ms": ms, "status": status, "status_message": "", "kind": "producer",
		"attributes": attrs, "events": []any{}, "links": []any{}, "missing_parent": false}
}

var t0 = time.Now().Add(-2 * time.Minute).Truncate(time.Millisecond)

// contractTrace is a message's trace: send, gateway, logic with store, an
// untraced hop, push, receive, ack; one span lost its parent.
func contractTrace() map[string]any {
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	spans := []map[string]any{
		span("a000000000000001", "", "im.client.send", "imwatch-client", "alice-d1", at(0), 40, "ok",
			map[string]any{"messaging.message.id": "m-1", "imwatch.user": "alice", "evil": evil}),
		span("a000000000000002", "a000000000000001", "im.gateway.receive", "gateway", "gw-1", at(2), 30, "ok", map[string]any{"messaging.system": "imwatch"}),
		span("a000000000000003", "a000000000000002", "im.logic.handle", "logic", "logic-1", at(4), 20, "ok", nil),
		span("a000000000000004", "a000000000000003", "im.store.append", "logic", "logic-1", at(5), 8, "ok", nil),
		span("a000000000000005", "a000000000000003", "im.gateway.push", "gateway", "gw-2", at(30), 5, "error", map[string]any{"imwatch.recipient": "bob"}),
		span("a000000000000006", "a0000000000000ff", "im.client.receive", "imwatch-client", "bob-d1", at(36), 2, "ok", nil),
	}
	spans[4]["status_message"] = "push failed " + evil
	spans[0]["events"] = []any{map[string]any{"name": "sent " + evil, "time": at(1).Format(time.RFC3339Nano), "attributes": map[string]any{"k": evil}}}
	spans[0]["links"] = []any{map[string]any{"trace_id": fanoutID, "span_id": "b000000000000001", "attributes": map[string]any{}}}
	spans[5]["missing_parent"] = true
	depth := []int{0, 1, 2, 3, 2, 0}
	for i, sp := range spans {
		sp["depth"] = depth[i]
		st, _ := time.Parse(time.RFC3339Nano, sp["start"].(string))
		sp["offset_ms"] = float64(st.Sub(t0)) / 1e6
	}
	return map[string]any{"trace_id": traceID,
		"root": map[string]any{"span_id": "a000000000000001", "name": "im.client.send", "service": "imwatch-client", "instance": "alice-d1",
			"is_root": true, "start": at(0).Format(time.RFC3339Nano), "duration_ms": 40, "span_count": 6, "error_count": 1, "missing_parents": 1,
			"services": []string{"gateway", "imwatch-client", "logic"}, "error": true},
		"spans": spans, "broken": true,
		"gaps": []any{map[string]any{"after_span_id": "a000000000000003", "before_span_id": "a000000000000005", "start": at(24).Format(time.RFC3339Nano), "duration_ms": 6}}}
}

func fanoutTrace() map[string]any {
	s := span("b000000000000001", "", "im.gateway.push", "gateway", "gw-2", t0.Add(50*time.Millisecond), 3, "ok", nil)
	s["trace_id"] = fanoutID
	return map[string]any{"trace_id": fanoutID, "root": map[string]any{"name": "im.gateway.push", "service": "gateway"}, "spans": []any{s}, "gaps": []any{}, "broken": false}
}

func probeTrace() map[string]any {
	s := span("c000000000000001", "", "im.probe.round", "imwatch-probe", "lab-1", t0, 3000, "error",
		map[string]any{"imwatch.probe.target": "local-im", "imwatch.probe.reason": "delivery_timeout"})
	s["trace_id"] = probeTID
	return map[string]any{"trace_id": probeTID, "root": map[string]any{"name": "im.probe.round", "service": "imwatch-probe"}, "spans": []any{s}, "gaps": []any{}, "broken": false}
}

func noErrors(t *testing.T, b *uitest.Browser, where string) {
	t.Helper()
	if errs := b.Errors(); len(errs) > 0 {
		t.Errorf("%s: page errors:\n%s", where, strings.Join(errs, "\n"))
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("%s: dialogs opened: %v", where, d)
	}
}

// injected counts elements that the evil string would have made had it been
// parsed as HTML.
const injected = `document.querySelectorAll('img').length`

func TestPagesAgainstContract(t *testing.T) {
	f := startFake(t, true)
	b := uitest.Start(t)
	dir := uitest.ArtifactsDir(t)
	for _, page := range []string{"overview", "services", "hosts", "probes", "traces", "alerts", "explore", "faults"} {
		hash := "#/" + page
		if page == "explore" {
			hash += "?q=" + "imwatch_im_requests_total"
		}
		b.Open(f.srv.URL+"/"+hash, page, 60*time.Second)
		noErrors(t, b, page)
		if n := uitest.Eval[int](b, injected); n != 0 {
			t.Errorf("%s: %d img elements: a label was parsed as HTML", page, n)
		}
		if page != "traces" && page != "faults" {
			if n := uitest.Eval[int](b, `document.querySelectorAll('.chart[data-state=data]').length`); n == 0 {
				t.Errorf("%s: no chart holds data", page)
			}
		}
		b.Screenshot(dir, page)
	}
	if l, _ := f.limits.Load().(string); l != "200" {
		t.Errorf("explore asked for a range with limit %q, want 200", l)
	}
	// A center in its first minute: live pages refresh every 2 s.
	b.Go("#/overview", "overview", 30*time.Second)
	if title := uitest.Eval[string](b, `(document.querySelector('span.live') || {}).title || ''`); title != "refreshes every 2 s" {
		t.Errorf("live badge of a young center says %q, want refreshes every 2 s", title)
	}
	// What the fake answered with HTML in it shows as text.
	b.Go("#/alerts", "alerts", 30*time.Second)
	if !uitest.Eval[bool](b, fmt.Sprintf(`[...document.querySelectorAll('.chip .v')].some(e => e.textContent === %q)`, evil)) {
		t.Errorf("alerts: the label value %q is not shown as text", evil)
	}
	noErrors(t, b, "alerts")
}

func TestTraceSearchByMessageIDOpensWaterfall(t *testing.T) {
	f := startFake(t, true)
	b := uitest.Start(t)
	// A search without a message id lists the traces.
	b.Open(f.srv.URL+"/#/traces?search=1", "traces", 30*time.Second)
	rowsText := uitest.Eval[[]string](b, `[...document.querySelectorAll('table.traces tbody tr')].map(r => [...r.cells].slice(1).map(c => c.textContent).join('|'))`)
	if len(rowsText) != 2 || rowsText[0] != traceID+"|im.client.send|imwatch-client|40 ms|6|errorbroken" {
		t.Errorf("search results %q", rowsText)
	}
	b.Open(f.srv.URL+"/#/traces", "traces", 30*time.Second)
	b.Do(30*time.Second,
		chromedp.SendKeys(chromedp.CSS(`form.search input[name=msg_id]`), "m-1"),
		chromedp.Click(chromedp.CSS(`form.search button[type=submit]`)),
		uitest.WaitFor(`!!document.querySelector('.waterfall .wrow[data-span]')`),
	)
	b.Do(30*time.Second, uitest.WaitReady("traces"))
	hash := uitest.Eval[string](b, `location.hash`)
	if !strings.HasPrefix(hash, "#/traces/"+traceID) {
		t.Fatalf("after the search the address is %q, want the trace %s", hash, traceID)
	}
	rows := uitest.Eval[[]string](b, `[...document.querySelectorAll('.waterfall .wrow[data-span] .wname')].map(e => e.textContent)`)
	want := []string{"im.client.send", "im.gateway.receive", "im.logic.handle", "im.store.append", "im.gateway.push", "im.client.receive"}
	if len(rows) != len(want) {
		t.Fatalf("waterfall rows %q, want %d spans", rows, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(rows[i], w) {
			t.Errorf("row %d: %q, want %s first", i, rows[i], w)
		}
	}
	if n := uitest.Eval[int](b, `document.querySelectorAll('.waterfall .wrow.gap').length`); n != 1 {
		t.Errorf("%d untraced gaps marked, want 1", n)
	}
	if !uitest.Eval[bool](b, `[...document.querySelectorAll('.wrow.orphan .badge')].some(e => e.textContent === 'parent missing')`) {
		t.Error("the span whose parent never arrived is not marked")
	}
	// The gap row comes right before the push it precedes.
	order := uitest.Eval[[]string](b, `[...document.querySelectorAll('.waterfall .wrow:not(.whead)')].map(e => e.dataset.gap ? 'gap' : e.dataset.span)`)
	if gi := indexOf(order, "gap"); gi < 0 || gi+1 >= len(order) || order[gi+1] != "a000000000000005" {
		t.Errorf("rows %v: the gap is not right before span a000000000000005", order)
	}
	// Open the first span: attributes, events and link show, HTML as text.
	b.Do(10*time.Second, chromedp.Click(chromedp.CSS(`.wrow[data-span="a000000000000001"]`)))
	vals := uitest.Eval[[]string](b, `[...document.querySelectorAll('.wdetails:not([hidden]) td.v, .wdetails:not([hidden]) td')].map(e => e.textContent)`)
	if indexOf(vals, evil) < 0 || indexOf(vals, "m-1") < 0 {
		t.Errorf("span details %q lack the attribute values as text", vals)
	}
	if n := uitest.Eval[int](b, injected); n != 0 {
		t.Errorf("%d img elements: a span attribute was parsed as HTML", n)
	}
	dir := uitest.ArtifactsDir(t)
	b.Screenshot(dir, "waterfall")
	// The link goes to the fan-out trace.
	b.Do(10*time.Second, chromedp.Click(chromedp.CSS(`.wdetails:not([hidden]) ul.links a.tracelink`)), uitest.WaitReady("traces"),
		uitest.WaitFor(`!!document.querySelector('.wrow[data-span="b000000000000001"]')`))
	noErrors(t, b, "traces")
}

func TestProbeFailureOpensItsTrace(t *testing.T) {
	f := startFake(t, true)
	b := uitest.Start(t)
	b.Open(f.srv.URL+"/#/probes", "probes", 30*time.Second)
	if got := uitest.Eval[string](b, `document.querySelector('table.failtable tbody tr td:nth-child(6)').textContent`); got != "not delivered within 3s "+evil {
		t.Errorf("failure message shown as %q", got)
	}
	b.Do(30*time.Second, chromedp.Click(chromedp.CSS(`table.failtable a.tracelink`)), uitest.WaitReady("traces"),
		uitest.WaitFor(`!!document.querySelector('.wrow[data-span="c000000000000001"]')`))
	if hash := uitest.Eval[string](b, `location.hash`); !strings.HasPrefix(hash, "#/traces/"+probeTID) {
		t.Errorf("after the click the address is %q, want the probe's trace", hash)
	}
	if n := uitest.Eval[int](b, injected); n != 0 {
		t.Errorf("%d img elements", n)
	}
	noErrors(t, b, "probes")
}

// TestWithoutTraceStore: a center without the trace API: the pages say so,
// never call it, and log no error.
func TestWithoutTraceStore(t *testing.T) {
	f := startFake(t, false)
	b := uitest.Start(t)
	for _, tc := range []struct{ page, text string }{
		{"traces", "No trace store yet"},
		{"probes", "No trace store yet"},
		{"overview", "No trace store yet"},
	} {
		b.Open(f.srv.URL+"/#/"+tc.page, tc.page, 30*time.Second)
		if !uitest.Eval[bool](b, fmt.Sprintf(`document.body.textContent.includes(%q)`, tc.text)) {
			t.Errorf("%s: does not say %q", tc.page, tc.text)
		}
		noErrors(t, b, tc.page)
	}
	if n := f.traceCalls.Load(); n != 0 {
		t.Errorf("the UI called the trace API %d times on a center without it", n)
	}
}

// TestScriptUnits runs the UI's pure functions in the browser: the outlier
// rule, axis ticks, durations, the span order of the waterfall.
func TestScriptUnits(t *testing.T) {
	f := startFake(t, false)
	b := uitest.Start(t)
	b.Open(f.srv.URL+"/#/explore", "explore", 30*time.Second)
	type outlierCase struct {
		Name    string             `json:"name"`
		Values  map[string]float64 `json:"values"`
		Measure string             `json:"measure"`
		Want    map[string]string  `json:"want"` // instance -> dir
	}
	cases := []outlierCase{
		{"one slow of five", map[string]float64{"a": 0.010, "b": 0.011, "c": 0.012, "d": 0.010, "e": 0.200}, "p99", map[string]string{"e": "high"}},
		{"spread fleet, none", map[string]float64{"a": 0.010, "b": 0.020, "c": 0.030, "d": 0.040}, "p99", map[string]string{}},
		{"two instances: too few", map[string]float64{"a": 0.01, "b": 5}, "p99", map[string]string{}},
		{"identical peers, noise under the floor", map[string]float64{"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.11}, "p99", map[string]string{}},
		{"identical peers, one far off", map[string]float64{"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.5}, "p99", map[string]string{"d": "high"}},
		{"error ratio 1 point above: under the floor", map[string]float64{"a": 0, "b": 0, "c": 0.01}, "errors", map[string]string{}},
		{"error ratio 10 points above", map[string]float64{"a": 0, "b": 0.001, "c": 0.1}, "errors", map[string]string{"c": "high"}},
		{"rate: a gateway that lost its clients", map[string]float64{"a": 100, "b": 104, "c": 98, "d": 3}, "rate", map[string]string{"d": "low"}},
		{"latency low is fine", map[string]float64{"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.001}, "p99", map[string]string{}},
		{"NaN ignored", map[string]float64{"a": 1, "b": 1, "c": 1}, "rate", map[string]string{}},
	}
	js, _ := json.Marshal(cases)
	got := uitest.Eval[map[string]map[string]string](b, fmt.Sprintf(`import('/ui/js/stats.js').then(m => {
		const out = {};
		for (const c of %s) {
			const r = m.outliers(c.values, c.measure);
			out[c.name] = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.dir]));
		}
		return out;
	})`, js))
	for _, c := range cases {
		if fmt.Sprint(got[c.Name]) != fmt.Sprint(c.Want) {
			t.Errorf("outliers %s: %v, want %v", c.Name, got[c.Name], c.Want)
		}
	}
	type evalCase struct{ expr, want string }
	for _, c := range []evalCase{
		{`import('/ui/js/chart.js').then(m => JSON.stringify(m.niceTicks(0, 0.93, 5)))`, `[0,0.2,0.4,0.6,0.8,1]`},
		{`import('/ui/js/chart.js').then(m => JSON.stringify(m.niceTicks(0, 7, 5)))`, `[0,2,4,6,8]`},
		{`import('/ui/js/stats.js').then(m => String(m.bucketQuantile(0.5, [[0.1, 10], [0.5, 60], [1, 90], [Infinity, 100]])))`, `0.42000000000000004`},
		{`import('/ui/js/stats.js').then(m => String(m.bucketQuantile(0.99, [[Infinity, 100], [1, 90], [0.5, 60], [0.1, 10]])))`, `1`},
		{`import('/ui/js/stats.js').then(m => String(m.bucketQuantile(0.05, [[0.1, 10], [0.5, 60], [1, 90], [Infinity, 100]])))`, `0.05`},
		{`import('/ui/js/stats.js').then(m => String(m.bucketQuantile(0.5, [[0.1, 0], [Infinity, 0]])))`, `NaN`},
		{`import('/ui/js/stats.js').then(m => String(m.bucketQuantile(0.5, [[0.1, 3], [1, 5]])))`, `NaN`},
		{`import('/ui/js/format.js').then(m => String(m.parseDuration('1h30m')))`, `5400000`},
		{`import('/ui/js/format.js').then(m => String(m.parseDuration('soon')))`, `NaN`},
		{`import('/ui/js/format.js').then(m => m.fmtValue(0.0123, 'seconds'))`, `12.3 ms`},
		{`import('/ui/js/format.js').then(m => m.fmtValue(0.25, 'percent'))`, `25%`},
		{`import('/ui/js/format.js').then(m => m.fmtValue(3 * 1024 * 1024, 'bytes'))`, `3 MiB`},
		{`import('/ui/js/format.js').then(m => m.fmtValue(1500, 'msg/s'))`, `1.5k msg/s`},
		{`import('/ui/js/format.js').then(m => m.promDuration(600000))`, `10m`},
		{`import('/ui/js/pages/traces.js').then(m => m.order([
			{span_id: 'c', parent_span_id: 'a', start: '2026-12-01T00:00:00.003Z'},
			{span_id: 'b', parent_span_id: 'a', start: '2026-12-01T00:00:00.002Z'},
			{span_id: 'a', parent_span_id: '', start: '2026-12-01T00:00:00.000Z'},
			{span_id: 'd', parent_span_id: 'b', start: '2026-12-01T00:00:00.004Z'},
			{span_id: 'x', parent_span_id: 'gone', start: '2026-12-01T00:00:00.001Z'},
		]).map(r => r.span.span_id + r.depth).join(' '))`, `a0 b1 d2 c1 x0`},
	} {
		if got := uitest.Eval[string](b, c.expr); got != c.want {
			t.Errorf("%s = %s, want %s", c.expr, got, c.want)
		}
	}
	noErrors(t, b, "units")
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

// TestPagesInFirefox: every page in a headless Firefox (Debian's
// firefox-esr, over WebDriver BiDi), against the same canned answers:
// it loads, draws its charts, logs no error and shows HTML as text.
func TestPagesInFirefox(t *testing.T) {
	f := startFake(t, true)
	ff := uitest.StartFirefox(t)
	dir := uitest.ArtifactsDir(t)
	for _, page := range []string{"overview", "services", "hosts", "probes", "alerts", "explore", "traces/" + traceID} {
		name := strings.SplitN(page, "/", 2)[0]
		hash := "#/" + page
		if page == "explore" {
			hash += "?q=imwatch_im_requests_total"
		}
		ff.Open(f.srv.URL+"/"+hash, name, 60*time.Second)
		var n int
		ff.Eval(`document.querySelectorAll('.chart[data-state=data], .waterfall .wrow[data-span]').length`, &n)
		if n == 0 {
			t.Errorf("firefox %s: no chart holds data", page)
		}
		ff.Eval(injected, &n)
		if n != 0 {
			t.Errorf("firefox %s: %d img elements", page, n)
		}
		ff.Screenshot(dir, "firefox-"+name)
	}
	if errs := ff.Errors(); len(errs) > 0 {
		t.Errorf("firefox: page errors:\n%s", strings.Join(errs, "\n"))
	}
}

// TestChartInteractions: the hover read-out, hiding a line from the legend,
// a drag that zooms every chart of the page to one range, and live refresh.
func TestChartInteractions(t *testing.T) {
	f := startFake(t, true)
	b := uitest.Start(t)
	b.Open(f.srv.URL+"/#/overview?range=1h&refresh=2s", "overview", 30*time.Second)
	// Hover the middle of the first chart.
	readout := uitest.Eval[string](b, `(() => {
		const c = document.querySelector('.chart[data-state=data]');
		const o = c.querySelector('rect.overlay').getBoundingClientRect();
		c.querySelector('rect.overlay').dispatchEvent(new MouseEvent('mousemove', {clientX: o.left + o.width / 2, clientY: o.top + 10, bubbles: true}));
		const r = c.querySelector('.readout');
		return r.hidden ? 'hidden' : r.textContent;
	})()`)
	if !strings.Contains(readout, "local-im from lab-1") || !strings.Contains(readout, "%") {
		t.Errorf("hover read-out: %q, want the line's name and value", readout)
	}
	// The legend hides and shows a line.
	paths := uitest.Eval[[]int](b, `(() => {
		const c = [...document.querySelectorAll('.chart')].find(c => c.querySelector('h3').textContent.startsWith('Message end-to-end'));
		const n = () => c.querySelectorAll('g.lines path').length;
		const before = n();
		c.querySelector('.legend button').click();
		const hidden = n();
		c.querySelector('.legend button').click();
		return [before, hidden, n()];
	})()`)
	if len(paths) != 3 || paths[0] != 2 || paths[1] != 1 || paths[2] != 2 {
		t.Errorf("lines before, after hiding one, after showing it again: %v, want [2 1 2]", paths)
	}
	// The service graph: a box per service, an edge per pair.
	if n := uitest.Eval[int](b, `document.querySelectorAll('svg.graph path.edge').length`); n != 5 {
		t.Errorf("service graph has %d edges, want 5", n)
	}
	if n := uitest.Eval[int](b, `document.querySelectorAll('svg.graph path.edge.messaging').length`); n != 2 {
		t.Errorf("service graph has %d messaging edges, want 2", n)
	}
	b.Screenshot(uitest.ArtifactsDir(t), "overview-graph")
	// Live: the page asks again by itself.
	before := f.queries.Load()
	imtestEventually(t, 20*time.Second, func() error {
		if n := f.queries.Load(); n <= before {
			return fmt.Errorf("no query since the page loaded (%d)", n)
		}
		return nil
	})
	// Drag across a chart: every chart of the page takes that range.
	hash := uitest.Eval[string](b, `(() => {
		const o = document.querySelector('.chart[data-state=data] rect.overlay');
		const r = o.getBoundingClientRect();
		const at = (type, x) => o.dispatchEvent(new MouseEvent(type, {clientX: r.left + x * r.width, clientY: r.top + 10, bubbles: true}));
		at('mousedown', 0.25); at('mousemove', 0.5); at('mouseup', 0.75);
		return location.hash;
	})()`)
	if !strings.Contains(hash, "from=") || !strings.Contains(hash, "to=") || strings.Contains(hash, "range=") {
		t.Fatalf("after a drag the address is %q, want an absolute range", hash)
	}
	b.Do(30*time.Second, uitest.WaitReady("overview"))
	spans := uitest.Eval[[]float64](b, `(() => {
		const p = new URLSearchParams(location.hash.split('?')[1]);
		return [Number(p.get('to')) - Number(p.get('from')), document.querySelectorAll('.chart[data-state=data]').length, document.querySelectorAll('.range .abs').length];
	})()`)
	if spans[0] < 25*60e3 || spans[0] > 35*60e3 || spans[1] == 0 || spans[2] != 1 {
		t.Errorf("zoomed range %v ms, charts with data %v, absolute range shown %v: want half of the hour", spans[0], spans[1], spans[2])
	}
	noErrors(t, b, "interactions")
}

// TestServicesMarksTheOutlier: of four instances, the one whose p99 is far
// above its peers' is marked, and nothing else.
func TestServicesMarksTheOutlier(t *testing.T) {
	f := startFake(t, false)
	b := uitest.Start(t)
	b.Open(f.srv.URL+"/#/services?service=gateway", "services", 30*time.Second)
	marks := uitest.Eval[[]string](b, `[...document.querySelectorAll('table.inst td[data-outlier]')].map(td => td.parentElement.firstChild.firstChild.textContent + ' ' + td.dataset.outlier)`)
	if len(marks) != 1 || marks[0] != "gw-4 p99" {
		t.Errorf("marked %q, want only gw-4's p99", marks)
	}
	if n := uitest.Eval[int](b, `document.querySelectorAll('table.inst tr.marked .badge').length`); n != 1 {
		t.Errorf("%d rows say they stand out, want 1", n)
	}
	b.Screenshot(uitest.ArtifactsDir(t), "services-outlier")
	noErrors(t, b, "services")
}

// TestFaultsPage: the form sends the fault as the API wants it (the fields
// of its kind only), a refusal shows the center's reason as text, the
// fault in force can be cleared, the charts shade the faults on their
// time axis, and the Services page marks the instance at fault.
func TestFaultsPage(t *testing.T) {
	f := startFake(t, true)
	b := uitest.Start(t)
	b.Open(f.srv.URL+"/#/faults", "faults", 30*time.Second)
	if got := uitest.Eval[string](b, `document.querySelector('.faults-active tbody').innerText`); !strings.Contains(got, "drop 100% at gateway.receive of gw-2") {
		t.Errorf("faults in force: %q", got)
	}
	if got := uitest.Eval[string](b, `document.querySelector('.faults-past tbody').innerText`); !strings.Contains(got, "stop at logic-1") || !strings.Contains(got, "cleared") {
		t.Errorf("recent faults: %q", got)
	}
	// A latency fault at gateway.push of gw-1.
	uitest.Eval[bool](b, `(() => {
		const set = (name, v) => { const el = document.querySelector('.faultform [name=' + name + ']'); el.value = v; el.dispatchEvent(new Event('change')); };
		set('kind', 'latency'); set('instance', 'gw-1'); set('hop', 'gateway.push'); set('delay', '250ms'); set('duration', '90s');
		document.querySelector('.faultform button[type=submit]').click();
		return true;
	})()`)
	b.Do(10*time.Second, uitest.WaitFor(`document.querySelector('.faultmsg').innerText.includes('injected')`))
	f.faultMu.Lock()
	posted := fmt.Sprint(f.posted)
	f.faultMu.Unlock()
	if want := "[map[delay:250ms duration:90s hop:gateway.push instance:gw-1 kind:latency]]"; posted != want {
		t.Errorf("posted %s, want %s", posted, want)
	}
	// Logic nodes have no gateway hops; a blackhole takes no hop, percent or delay.
	hops := uitest.Eval[[]string](b, `(() => {
		const set = (name, v) => { const el = document.querySelector('.faultform [name=' + name + ']'); el.value = v; el.dispatchEvent(new Event('change')); };
		set('kind', 'drop'); set('instance', 'logic-1');
		return [...document.querySelectorAll('.faultform [name=hop] option')].map(o => o.value);
	})()`)
	if fmt.Sprint(hops) != "[logic.handle store.append]" {
		t.Errorf("hops offered for logic-1: %v", hops)
	}
	uitest.Eval[bool](b, `(() => {
		const set = (name, v) => { const el = document.querySelector('.faultform [name=' + name + ']'); el.value = v; el.dispatchEvent(new Event('change')); };
		set('kind', 'blackhole'); set('instance', 'gw-1');
		document.querySelector('.faultform button[type=submit]').click();
		return true;
	})()`)
	b.Do(10*time.Second, uitest.WaitFor(`document.querySelector('.faultmsg').innerText.includes('Refused')`))
	if got := uitest.Eval[string](b, `document.querySelector('.faultmsg').innerText`); !strings.Contains(got, evil) {
		t.Errorf("refusal shows %q, want the center's reason as text", got)
	}
	f.faultMu.Lock()
	last := fmt.Sprint(f.posted[len(f.posted)-1])
	f.faultMu.Unlock()
	if last != "map[duration:90s instance:gw-1 kind:blackhole]" {
		t.Errorf("blackhole posted %s", last)
	}
	b.ResetErrors() // the browser logs the 409 itself
	// Clear the drop at gw-2.
	uitest.Eval[bool](b, `(document.querySelector('.faults-active tr[data-fault="f1-1"] button.clear').click(), true)`)
	b.Do(10*time.Second, uitest.WaitFor(`!document.querySelector('.faults-active tr[data-fault="f1-1"]')`))
	noErrors(t, b, "faults")
	if n := uitest.Eval[int](b, injected); n != 0 {
		t.Errorf("%d img elements", n)
	}
	b.Screenshot(uitest.ArtifactsDir(t), "faults")

	// The overview's charts shade the three faults of the last hour.
	b.Go("#/overview?range=1h", "overview", 30*time.Second)
	if n := uitest.Eval[int](b, `document.querySelectorAll('.chart[data-faults="3"] rect.fault.active').length`); n == 0 {
		t.Errorf("no chart shades the three faults of the last hour, the one in force as such")
	}
	if got := uitest.Eval[string](b, `document.querySelector('.faults-mini').innerText`); !strings.Contains(got, "latency +250ms at gateway.push of gw-1") {
		t.Errorf("overview's faults in force: %q", got)
	}
	// Services marks gw-1 (the latency fault in force), and only it.
	b.Go("#/services?service=gateway", "services", 30*time.Second)
	marked := uitest.Eval[[]string](b, `[...document.querySelectorAll('table.inst tr.atfault')].map(tr => tr.firstChild.firstChild.textContent + ': ' + tr.dataset.atfault)`)
	if len(marked) != 1 || !strings.HasPrefix(marked[0], "gw-1: fault f1-") {
		t.Errorf("marked at fault: %q, want gw-1 only", marked)
	}
	noErrors(t, b, "services")
}
