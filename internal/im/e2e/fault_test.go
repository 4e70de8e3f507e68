package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/ui/uitest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// alertSel is an alert the test waits for: its name and the labels it must
// carry.
type alertSel struct {
	name   string
	labels map[string]string
}

func (a alertSel) String() string {
	var kv []string
	for k, v := range a.labels {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return a.name + "{" + strings.Join(kv, ",") + "}"
}

type upAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func centerAlerts(base string) ([]upAlert, error) {
	var r struct {
		Data struct {
			Alerts []upAlert `json:"alerts"`
		} `json:"data"`
	}
	err := getJSON(base+"/api/v1/alerts", &r)
	return r.Data.Alerts, err
}

// firing reports whether an alert matching a fires, and which probe alerts
// fire at all (for messages).
func firing(base string, a alertSel) (bool, []string, error) {
	alerts, err := centerAlerts(base)
	if err != nil {
		return false, nil, err
	}
	hit := false
	var all []string
	for _, x := range alerts {
		if x.State != "firing" || !strings.HasPrefix(x.Labels["alertname"], "IMProbe") {
			continue
		}
		all = append(all, fmt.Sprintf("%s{location=%s,reason=%s}", x.Labels["alertname"], x.Labels["location"], x.Labels["reason"]))
		if x.Labels["alertname"] != a.name {
			continue
		}
		ok := true
		for k, v := range a.labels {
			ok = ok && x.Labels[k] == v
		}
		hit = hit || ok
	}
	return hit, all, nil
}

func postFault(t *testing.T, base, spec string) string {
	t.Helper()
	resp, err := http.Post(base+"/api/faults", "application/json", bytes.NewReader([]byte(spec)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Fault struct {
			ID string `json:"id"`
		} `json:"fault"`
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/faults %s: %s %s", spec, resp.Status, out.Error)
	}
	return out.Fault.ID
}

// faultCase is one fault of a round and the alert it must fire.
type faultCase struct {
	spec  string // POST /api/faults body; or, with cli, the arguments of imwatch fault add
	cli   bool
	alert alertSel
	// The trace of a failed probe round of the alert's location ends at
	// this span (im.<hop>) on this instance; "" when the round never got a
	// message into the IM (a connect failure) or did not fail (latency).
	lastSpan, lastInstance string
}

// TestFaultsAgainstUp: against a running `imwatch up`, for each kind of
// fault the right alert fires (and the probe alerts of the location the
// fault does not touch do not), and it resolves after the fault is
// cleared. A round injects faults at both gateways at once, or one at the
// logic node, which both locations go through. In the last round the UI's
// Services page marks the instance at fault, and only it, and the overview
// shows the earlier faults on its time axis.
func TestFaultsAgainstUp(t *testing.T) {
	up := startUp(t, t.TempDir())
	m := regexp.MustCompile(`center: +(http://\S+)`).FindStringSubmatch(up.stdout())
	if m == nil {
		t.Fatalf("no center address in:\n%s", up.stdout())
	}
	base := m[1]
	// Healthy first: both locations have probed, and no probe alert fires.
	imtest.Eventually(t, 60*time.Second, func() error {
		s, err := centertest.Query(base, `count(probe_success == 1)`, time.Now())
		if err != nil {
			return err
		}
		if len(s) == 0 || s[0].Value[1] != "2" {
			return fmt.Errorf("probes of both locations not in yet: %v", s)
		}
		return nil
	})
	fastRounds := func(loc, reason string) alertSel {
		return alertSel{"IMProbeRoundFailed", map[string]string{"location": loc, "reason": reason}}
	}
	slow := func(loc string) alertSel { return alertSel{"IMProbeRoundTripHigh", map[string]string{"location": loc}} }
	rounds := []struct {
		name   string
		faults []faultCase
		quiet  []alertSel // must not fire meanwhile
		ui     string     // service/instance the Services page must mark, alone
	}{
		{"stop gw-1, blackhole gw-2", []faultCase{
			{spec: `{"kind":"stop","instance":"gw-1","duration":"2m"}`, alert: fastRounds("up-gw-1", "connect")},
			{spec: `{"kind":"blackhole","instance":"gw-2","duration":"2m"}`, alert: fastRounds("up-gw-2", "delivery_timeout"),
				lastSpan: "im.gateway.push", lastInstance: "gw-2"},
		}, nil, ""},
		{"latency at gw-1's push, drop at gw-2's push", []faultCase{
			{spec: `{"kind":"latency","hop":"gateway.push","instance":"gw-1","delay":"1500ms","duration":"2m"}`, alert: slow("up-gw-1")},
			{spec: `{"kind":"drop","hop":"gateway.push","instance":"gw-2","duration":"2m"}`, alert: fastRounds("up-gw-2", "delivery_timeout"),
				lastSpan: "im.gateway.push", lastInstance: "gw-2"},
		}, []alertSel{{"IMProbeRoundFailed", map[string]string{"location": "up-gw-1"}}}, ""},
		{"drop at logic-1's store append", []faultCase{
			{spec: `{"kind":"drop","hop":"store.append","instance":"logic-1","duration":"2m"}`, alert: fastRounds("up-gw-2", "ack_timeout"),
				lastSpan: "im.store.append", lastInstance: "logic-1"},
		}, nil, "logic/logic-1"},
		{"latency at logic-1's handle", []faultCase{
			{spec: `{"kind":"latency","hop":"logic.handle","instance":"logic-1","delay":"1500ms","duration":"2m"}`, alert: slow("up-gw-1")},
		}, nil, "logic/logic-1"},
		{"stop logic-1", []faultCase{
			{spec: `{"kind":"stop","instance":"logic-1","duration":"2m"}`, alert: fastRounds("up-gw-1", "ack_timeout"),
				lastSpan: "im.gateway.receive", lastInstance: "gw-1"},
		}, nil, "logic/logic-1"},
		{"drop at gw-1's receive", []faultCase{
			{spec: "drop --hop gateway.receive --instance gw-1 --duration 2m", cli: true, alert: fastRounds("up-gw-1", "ack_timeout"),
				lastSpan: "im.gateway.receive", lastInstance: "gw-1"},
		}, []alertSel{{"IMProbeRoundFailed", map[string]string{"location": "up-gw-2"}}}, "gateway/gw-1"},
	}
	for _, r := range rounds {
		t.Run(r.name, func(t *testing.T) {
			var ids []string
			t.Cleanup(func() { // a failed round leaves no fault behind for the next
				for _, id := range ids {
					if req, err := http.NewRequest(http.MethodDelete, base+"/api/faults/"+id, nil); err == nil {
						if resp, err := http.DefaultClient.Do(req); err == nil {
							resp.Body.Close()
						}
					}
				}
			})
			for _, f := range r.faults {
				if f.cli {
					p := startProc(t, "fault-add", append(append([]string{"fault"}, "add"), append(strings.Fields(f.spec), "--center", base)...)...)
					if code := p.wait(30 * time.Second); code != 0 {
						t.Fatalf("imwatch fault add %s: exit %d: %s", f.spec, code, p.logTail(5))
					}
					id := regexp.MustCompile(`^fault (\S+):`).FindStringSubmatch(p.stdout())
					if id == nil {
						t.Fatalf("imwatch fault add said %q", p.stdout())
					}
					ids = append(ids, id[1])
				} else {
					ids = append(ids, postFault(t, base, f.spec))
				}
			}
			for _, f := range r.faults {
				imtest.Eventually(t, 45*time.Second, func() error {
					ok, all, err := firing(base, f.alert)
					if err != nil {
						return err
					}
					if !ok {
						return fmt.Errorf("%s not firing; probe alerts firing: %v", f.alert, all)
					}
					return nil
				})
			}
			for _, f := range r.faults {
				if f.lastSpan != "" {
					checkFailureTrace(t, base, f.alert.labels["location"], f.lastSpan, f.lastInstance)
				}
			}
			for _, q := range r.quiet {
				if ok, all, _ := firing(base, q); ok {
					t.Errorf("%s fires, though the fault is elsewhere (firing: %v)", q, all)
				}
			}
			if r.ui != "" {
				b := uitest.Start(t) // this round's: a browser's failures end the test that started it
				svc, inst, _ := strings.Cut(r.ui, "/")
				checkMarked(t, b, base, svc, inst, strings.HasSuffix(r.name, "gw-1's receive"))
			}
			// Clear: one by the CLI, the rest by the API.
			for i, id := range ids {
				if i == 0 {
					p := startProc(t, "fault-clear", "fault", "clear", id, "--center", base)
					if code := p.wait(30 * time.Second); code != 0 || !strings.Contains(p.stdout(), "cleared") {
						t.Fatalf("imwatch fault clear %s: exit %d, %q: %s", id, code, p.stdout(), p.logTail(5))
					}
					continue
				}
				req, _ := http.NewRequest(http.MethodDelete, base+"/api/faults/"+id, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("DELETE %s: %v %v", id, err, resp)
				}
				resp.Body.Close()
			}
			for _, f := range r.faults {
				imtest.Eventually(t, 60*time.Second, func() error {
					ok, all, err := firing(base, f.alert)
					if err != nil {
						return err
					}
					if ok {
						return fmt.Errorf("%s still firing after clear (%v)", f.alert, all)
					}
					return nil
				})
			}
		})
	}
	// Every probe alert has resolved: the cluster is whole again.
	imtest.Eventually(t, 60*time.Second, func() error {
		_, all, err := firing(base, alertSel{name: "-"})
		if err != nil {
			return err
		}
		if len(all) > 0 {
			return fmt.Errorf("still firing: %v", all)
		}
		return nil
	})
}

// checkMarked opens the Services page and wants inst, and no other
// instance, marked at fault; it also keeps a screenshot of the overview
// with the fault in force (IMWATCH_OVERVIEW_PNG names a file to copy it to:
// docs/overview.png is made so).
func checkMarked(t *testing.T, b *uitest.Browser, base, svc, inst string, shots bool) {
	t.Helper()
	page := "#/services?range=5m&service=" + svc
	b.Open(base+"/"+page, "services", 60*time.Second)
	var marked []string
	deadline := time.Now().Add(30 * time.Second)
	for try := 1; time.Now().Before(deadline); try++ {
		marked = uitest.Eval[[]string](b, `[...document.querySelectorAll('table.inst tr.atfault')].map(tr => tr.firstChild.firstChild.textContent)`)
		if len(marked) > 0 {
			break
		}
		// Again, under a hash of its own: the same hash would not route.
		b.Go(page+"&try="+strconv.Itoa(try), "services", 60*time.Second)
	}
	if len(marked) != 1 || marked[0] != inst {
		t.Errorf("Services (%s) marks %q at fault, want only %s", svc, marked, inst)
	}
	dir := uitest.ArtifactsDir(t)
	b.Screenshot(dir, "services-at-fault-"+inst)
	defer func() {
		if errs := b.Errors(); len(errs) > 0 {
			t.Errorf("page errors:\n%s", strings.Join(errs, "\n"))
		}
		b.ResetErrors()
	}()
	if !shots {
		return
	}
	b.Open(base+"/#/overview?range=5m", "overview", 60*time.Second)
	png := b.Screenshot(dir, "overview-with-fault")
	if dst := os.Getenv("IMWATCH_OVERVIEW_PNG"); dst != "" {
		data, err := os.ReadFile(png)
		if err == nil {
			err = os.WriteFile(dst, data, 0o644)
		}
		if err != nil {
			t.Errorf("copy the overview screenshot: %v", err)
		}
	}
}

// TestFaultsAcrossProcesses: the gateway, the logic node and the center
// each in a process of its own, on a real nats-server: the center takes a
// stop fault for the gateway and the gateway's process stops its gateway
// and starts it again at clear, on the same address.
func TestFaultsAcrossProcesses(t *testing.T) {
	nats := imtest.StartNATSServer(t)
	logic := startProc(t, "logic", "im", "logic", "--nats", nats.URL, "--node", "logic-1", "--metrics-listen", "127.0.0.1:0", "--faults")
	logic.waitLine("logic node logic-1 running", 30*time.Second)
	gwAddr := "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
	gw := startProc(t, "gw-a", "im", "gateway", "--nats", nats.URL, "--listen", gwAddr, "--id", "gw-a", "--secret", string(imtest.Secret), "--faults")
	gw.waitLine("gateway gw-a listening", 30*time.Second)
	center := startProc(t, "center", "center", "--listen", "127.0.0.1:0", "--faults-nats", nats.URL)
	line := center.waitLine("center listening on", 30*time.Second)
	base := regexp.MustCompile(`(http://\S+)`).FindString(line)
	cli := func(args ...string) string {
		t.Helper()
		p := startProc(t, "fault-"+args[0], append(append([]string{"fault"}, args...), "--center", base)...)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("imwatch fault %v: exit %d: %s", args, code, p.logTail(5))
		}
		return p.stdout()
	}
	imtest.Eventually(t, 15*time.Second, func() error {
		if out := cli("list"); !strings.Contains(out, "gw-a (gateway), logic-1 (logic)") {
			return fmt.Errorf("instances not reported: %s", out)
		}
		return nil
	})
	id := regexp.MustCompile(`^fault (\S+):`).FindStringSubmatch(cli("add", "stop", "--instance", "gw-a", "--duration", "1m"))
	if id == nil {
		t.Fatal("no fault id")
	}
	hc := &http.Client{Timeout: time.Second}
	imtest.Eventually(t, 15*time.Second, func() error {
		if resp, err := hc.Get("http://" + gwAddr + "/-/healthy"); err == nil {
			resp.Body.Close()
			return errors.New("gw-a still serves")
		}
		return nil
	})
	if out := cli("clear", id[1]); !strings.Contains(out, "cleared") {
		t.Fatalf("clear said %q", out)
	}
	waitHealthy(t, "http://"+gwAddr+"/-/healthy", 20*time.Second)
	gw.signal(syscall.SIGTERM)
	if code := gw.wait(30 * time.Second); code != 0 {
		t.Errorf("gateway exited %d after a restart by fault and SIGTERM", code)
	}
}

// checkFailureTrace: the newest probe failure of location links to a trace
// whose last hop in the IM is span on instance. It needs the center's
// trace store (GET /api/probes/failures, issue 5) and the IM's hop spans;
// until a build has both it says what it could not check.
func checkFailureTrace(t *testing.T, base, location, span, instance string) {
	t.Helper()
	var feats struct {
		ProbeFailures bool `json:"probe_failures"`
		Traces        bool `json:"traces"`
	}
	if err := getJSON(base+"/ui/features.json", &feats); err != nil {
		t.Fatal(err)
	}
	if !feats.ProbeFailures || !feats.Traces {
		t.Logf("not checked: the failure's trace ends at %s on %s (this center has no trace store)", span, instance)
		return
	}
	type spanJSON struct {
		Name     string `json:"name"`
		Service  string `json:"service"`
		Instance string `json:"instance"`
		Start    string `json:"start"`
	}
	var last spanJSON
	var imSpans int
	imtest.Eventually(t, 30*time.Second, func() error {
		var fl struct {
			Failures []struct {
				TraceID string `json:"trace_id"`
				Reason  string `json:"reason"`
			} `json:"failures"`
		}
		if err := getJSON(base+"/api/probes/failures?limit=1&location="+location, &fl); err != nil {
			return err
		}
		if len(fl.Failures) == 0 || fl.Failures[0].TraceID == "" {
			return fmt.Errorf("no probe failure of %s with a trace id", location)
		}
		var tr struct {
			Traces []struct {
				Spans []spanJSON `json:"spans"`
			} `json:"traces"`
		}
		if err := getJSON(base+"/api/traces/"+fl.Failures[0].TraceID, &tr); err != nil {
			return err
		}
		if len(tr.Traces) == 0 {
			return fmt.Errorf("trace %s not found", fl.Failures[0].TraceID)
		}
		last, imSpans = spanJSON{}, 0
		var lastAt time.Time
		for _, s := range tr.Traces[0].Spans {
			if s.Service == "imwatch-probe" {
				continue
			}
			imSpans++
			if at, err := time.Parse(time.RFC3339Nano, s.Start); err == nil && at.After(lastAt) {
				last, lastAt = s, at
			}
		}
		return nil
	})
	if imSpans == 0 {
		// None of the IM's hops in this trace: fine only while the IM
		// leaves no spans at all.
		var any struct {
			Traces []any `json:"traces"`
		}
		if err := getJSON(base+"/api/traces?operation=im.gateway.receive&limit=1", &any); err != nil {
			t.Fatal(err)
		}
		if len(any.Traces) > 0 {
			t.Errorf("the trace of %s's failed round has no span of the IM, though the IM is traced: want it to end at %s on %s", location, span, instance)
			return
		}
		t.Logf("not checked: the failure's trace ends at %s on %s (the IM's hops leave no spans yet)", span, instance)
		return
	}
	if last.Name != span || last.Instance != instance {
		t.Errorf("the trace of %s's failed round ends at %s on %s, want %s on %s", location, last.Name, last.Instance, span, instance)
	}
}
