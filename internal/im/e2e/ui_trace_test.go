package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/imwatch/imwatch/internal/center/ui/uitest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// TestUITracesAgainstUp: with the center's trace store (issue 5), spans sent
// as an OTLP exporter sends them: searching a message's id in the UI opens
// that message's waterfall, and clicking a failed probe round on the probes
// page opens its trace. The same flows also run against the contract's JSON
// in internal/center/ui (browser_test.go).
func TestUITracesAgainstUp(t *testing.T) {
	b := uitest.Start(t)
	data := t.TempDir()
	up := startUp(t, data)
	m := regexp.MustCompile(`center: +(http://\S+)`).FindStringSubmatch(up.stdout())
	if m == nil {
		t.Fatalf("no center address in:\n%s", up.stdout())
	}
	base := m[1]
	var feats struct {
		Traces        bool `json:"traces"`
		ProbeFailures bool `json:"probe_failures"`
	}
	if err := getJSON(base+"/ui/features.json", &feats); err != nil {
		t.Fatal(err)
	}
	if !feats.Traces || !feats.ProbeFailures {
		t.Fatalf("/ui/features.json says traces=%v probe_failures=%v: the center of imwatch up must have its trace store and the probe-failure list", feats.Traces, feats.ProbeFailures)
	}

	// A message's trace and a failed probe round, as OTLP/JSON.
	now := time.Now()
	ns := func(ms int) string { return fmt.Sprint(now.Add(time.Duration(ms) * time.Millisecond).UnixNano()) }
	const msgTrace, probeTrace = "4bf92f3577b34da6a3ce929d0e0e4736", "5b8efff798038103d269b633813fc60c"
	span := func(tid, id, parent, name string, from, to int, status, attrs string) string {
		return fmt.Sprintf(`{"traceId":%q,"spanId":%q,"parentSpanId":%q,"name":%q,"kind":1,"startTimeUnixNano":%q,"endTimeUnixNano":%q,"attributes":[%s],"status":%s}`,
			tid, id, parent, name, ns(from), ns(to), attrs, status)
	}
	str := func(k, v string) string { return fmt.Sprintf(`{"key":%q,"value":{"stringValue":%q}}`, k, v) }
	res := func(svc, inst string, spans ...string) string {
		return fmt.Sprintf(`{"resource":{"attributes":[%s,%s]},"scopeSpans":[{"spans":[%s]}]}`,
			str("service.name", svc), str("service.instance.id", inst), strings.Join(spans, ","))
	}
	body := `{"resourceSpans":[` + strings.Join([]string{
		res("imwatch-client", "alice-d1", span(msgTrace, "a000000000000001", "", "im.client.send", -60, -20, `{}`,
			str("messaging.message.id", "ui-msg-1")+","+str("evil", evilLabel))),
		res("gateway", "gw-1", span(msgTrace, "a000000000000002", "a000000000000001", "im.gateway.receive", -58, -30, `{}`, "")),
		res("logic", "logic-1", span(msgTrace, "a000000000000003", "a000000000000002", "im.logic.handle", -56, -40, `{}`, ""),
			span(msgTrace, "a000000000000004", "a000000000000003", "im.store.append", -55, -48, `{}`, "")),
		res("imwatch-probe", "lab-1", span(probeTrace, "c000000000000001", "", "im.probe.round", -3000, -10, `{"code":2,"message":"not delivered within 3s"}`,
			str("imwatch.probe.target", "local-im")+","+str("imwatch.probe.protocol", "imwatch")+","+str("imwatch.probe.location", "lab-1")+","+
				str("imwatch.probe.reason", "delivery_timeout"))),
	}, ",") + `]}`
	resp, err := http.Post(base+"/v1/traces", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /v1/traces: %s", resp.Status)
	}
	imtest.Eventually(t, 30*time.Second, func() error {
		var r struct {
			Traces []any `json:"traces"`
		}
		if err := getJSON(base+"/api/traces?msg_id=ui-msg-1", &r); err != nil {
			return err
		}
		if len(r.Traces) != 1 {
			return fmt.Errorf("%d traces of the message", len(r.Traces))
		}
		return nil
	})

	// Search the message id: its waterfall opens.
	b.Open(base+"/#/traces?range=15m", "traces", 60*time.Second)
	b.Do(60*time.Second,
		chromedp.SendKeys(chromedp.CSS(`form.search input[name=msg_id]`), "ui-msg-1"),
		chromedp.Click(chromedp.CSS(`form.search button[type=submit]`)),
		uitest.WaitFor(`location.hash.startsWith('#/traces/') && !!document.querySelector('.waterfall .wrow[data-span]')`),
	)
	b.Do(30*time.Second, uitest.WaitReady("traces"))
	if h := uitest.Eval[string](b, `location.hash`); !strings.HasPrefix(h, "#/traces/"+msgTrace) {
		t.Errorf("opened %q, want the trace %s", h, msgTrace)
	}
	names := uitest.Eval[[]string](b, `[...document.querySelectorAll('.waterfall .wrow[data-span] .wname')].map(e => e.textContent)`)
	if strings.Join(names, " ") != "im.client.send im.gateway.receive im.logic.handle im.store.append" {
		t.Errorf("waterfall rows %q", names)
	}
	b.Do(10*time.Second, chromedp.Click(chromedp.CSS(`.wrow[data-span="a000000000000001"]`)))
	if !uitest.Eval[bool](b, `[...document.querySelectorAll('.wdetails:not([hidden]) td.v')].some(e => e.textContent === `+jsString(evilLabel)+`)`) {
		t.Error("the span attribute holding HTML is not shown as text")
	}
	dir := uitest.ArtifactsDir(t)
	b.Screenshot(dir, "waterfall")

	// Click the failed probe round: its trace opens.
	b.Open(base+"/#/probes?range=15m", "probes", 60*time.Second)
	b.Do(60*time.Second, chromedp.Click(chromedp.CSS(`table.failtable a.tracelink`)), uitest.WaitReady("traces"),
		uitest.WaitFor(`!!document.querySelector('.wrow[data-span="c000000000000001"]')`))
	if h := uitest.Eval[string](b, `location.hash`); !strings.HasPrefix(h, "#/traces/"+probeTrace) {
		t.Errorf("the probe failure opened %q, want the trace %s", h, probeTrace)
	}
	b.Screenshot(dir, "probe-failure-trace")
	if n := uitest.Eval[int](b, `document.querySelectorAll('img').length`); n != 0 {
		t.Errorf("%d img elements", n)
	}
	if errs := b.Errors(); len(errs) > 0 {
		t.Errorf("page errors:\n%s", strings.Join(errs, "\n"))
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("dialogs opened: %v", d)
	}
}

func getJSON(u string, v any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
