// Command mttd measures how fast imwatch finds a broken link and sees it
// healed (issue 8: detect within 10 s at the default 5 s probe interval,
// resolve within 30 s), against a running `imwatch up` with its default
// rules, intervals and simulated users.
//
// For each kind of fault, runs times: wait until the probes of the
// location are healthy and no probe alert fires, wait a random 0-5 s (so
// that injections fall anywhere in the probe interval), inject the fault
// through POST /api/faults (t0), and record
//
//   - to first failed round: the timestamp of the first sample of the
//     prober's counters (remote-written every second) that counts a failed
//     round (probe_failures_total) or, for latency, a round slower than 1 s;
//   - to alert firing: the activeAt of the expected alert at the center
//     (for: 0s, so it fires at the evaluation that first sees the failure);
//
// then hold the fault 5 s, clear it (t1) and record
//
//   - to alert resolved: when the alert is gone from /api/v1/alerts (polled
//     every 100 ms).
//
// Before the faults it also times the start of `imwatch up` (to "imwatch is
// up.", to /-/ready, to the first probe result and message rate queryable,
// which is what the overview draws) and watches a healthy run for -healthy,
// counting the probe alerts that fire in it (none should).
//
//	go run ./bench/mttd -runs 5
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// kind is one row of the report: a fault and the alert it must fire.
type kind struct {
	name     string
	spec     string
	alert    string
	labels   map[string]string
	location string
	slow     bool // latency: the first slow round, not a failed one
}

var kinds = []kind{
	{"drop 100% at gateway.receive of gw-1", `{"kind":"drop","hop":"gateway.receive","instance":"gw-1","duration":"5m"}`,
		"IMProbeRoundFailed", map[string]string{"location": "up-gw-1", "reason": "ack_timeout"}, "up-gw-1", false},
	{"latency +1.5s at gateway.push of gw-1", `{"kind":"latency","hop":"gateway.push","instance":"gw-1","delay":"1500ms","duration":"5m"}`,
		"IMProbeRoundTripHigh", map[string]string{"location": "up-gw-1"}, "up-gw-1", true},
	{"stop gw-1", `{"kind":"stop","instance":"gw-1","duration":"5m"}`,
		"IMProbeRoundFailed", map[string]string{"location": "up-gw-1", "reason": "connect"}, "up-gw-1", false},
	{"blackhole gw-2", `{"kind":"blackhole","instance":"gw-2","duration":"5m"}`,
		"IMProbeRoundFailed", map[string]string{"location": "up-gw-2", "reason": "delivery_timeout"}, "up-gw-2", false},
	{"stop logic-1", `{"kind":"stop","instance":"logic-1","duration":"5m"}`,
		"IMProbeRoundFailed", map[string]string{"location": "up-gw-1", "reason": "ack_timeout"}, "up-gw-1", false},
}

func main() {
	runs := flag.Int("runs", 5, "runs of each kind of fault")
	bin := flag.String("imwatch", "", "imwatch binary (default: go build one)")
	healthy := flag.Duration("healthy", 3*time.Minute, "watch a healthy run this long first, counting probe alerts")
	only := flag.String("only", "", "run only the kinds whose name contains one of these (comma-separated)")
	flag.Parse()
	if err := run(*runs, *bin, *healthy, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench/mttd:", err)
		os.Exit(1)
	}
}

func run(runs int, bin string, healthy time.Duration, only string) error {
	tmp, err := os.MkdirTemp("", "imwatch-bench-mttd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if bin == "" {
		bin = filepath.Join(tmp, "imwatch")
		b := exec.Command("go", "build", "-o", bin, "./cmd/imwatch")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("build: %w", err)
		}
	}
	up, st, err := startUp(bin, filepath.Join(tmp, "data"))
	if err != nil {
		return err
	}
	defer up.stop()
	fmt.Printf("start of imwatch up: %.2f s to \"imwatch is up.\", %.2f s to /-/ready, %.2f s to the first probe result and message rate in the center\n",
		st.printed.Seconds(), st.ready.Seconds(), st.data.Seconds())

	if healthy > 0 {
		from := time.Now()
		time.Sleep(healthy)
		n, err := countProbeAlerts(up.center, from, time.Now())
		if err != nil {
			return err
		}
		fmt.Printf("healthy run: %d probe alert(s) fired in %s\n", n, healthy)
	}

	fmt.Printf("\n%-40s %5s  %-24s %-24s %-24s\n", "fault", "runs", "to first failed round s", "to alert firing s", "clear to resolved s")
	for _, k := range kinds {
		if only != "" && !slices.ContainsFunc(strings.Split(only, ","), func(o string) bool { return strings.Contains(k.name, o) }) {
			continue
		}
		var first, fire, resolve []float64
		for i := 0; i < runs; i++ {
			f, a, r, err := once(up.center, k)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", k.name, i+1, err)
			}
			first, fire, resolve = append(first, f), append(fire, a), append(resolve, r)
			fmt.Fprintf(os.Stderr, "%s run %d: first %.1f s, firing %.1f s, resolved %.1f s\n", k.name, i+1, f, a, r)
		}
		fmt.Printf("%-40s %5d  %-24s %-24s %-24s\n", k.name, runs, stat(first), stat(fire), stat(resolve))
	}
	return nil
}

// stat is "median (min-max)".
func stat(xs []float64) string {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf("%.1f (%.1f-%.1f)", med, s[0], s[len(s)-1])
}

// once injects k's fault once and measures.
func once(center string, k kind) (first, fire, resolve float64, err error) {
	// Healthy: none of the fast probe alerts fires, and the location's
	// last round succeeded. (The slow ones, IMProbeFailing over 5 minutes,
	// may fire after a few runs in a row: rightly, and they are not what
	// is measured.)
	if err := waitFor(90*time.Second, func() (bool, error) {
		alerts, err := probeAlerts(center)
		if err != nil {
			return false, err
		}
		for _, a := range alerts {
			if n := a.Labels["alertname"]; n == "IMProbeRoundFailed" || n == "IMProbeRoundTripHigh" {
				return false, nil
			}
		}
		v, err := scalar(center, fmt.Sprintf(`probe_success{location=%q}`, k.location))
		return v == 1, err
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("not healthy before the fault: %w; %s", err, diagnose(center, k.location))
	}
	time.Sleep(time.Duration(rand.Int64N(int64(5 * time.Second))))
	failures := fmt.Sprintf(`sum(probe_failures_total{location=%q})`, k.location)
	if k.slow {
		failures = fmt.Sprintf(`sum(probe_e2e_latency_seconds_count{location=%q}) - sum(probe_e2e_latency_seconds_bucket{location=%q,le=~"1|1.0"})`, k.location, k.location)
	}
	base, err := scalar(center, failures)
	if err != nil {
		return 0, 0, 0, err
	}
	t0 := time.Now()
	id, err := addFault(center, k.spec)
	if err != nil {
		return 0, 0, 0, err
	}
	defer clearFault(center, id) // again, should a step fail
	var activeAt time.Time
	if err := waitFor(60*time.Second, func() (bool, error) {
		at, ok, err := alertActiveAt(center, k.alert, k.labels)
		activeAt = at
		return ok, err
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("alert %s %v did not fire: %w", k.alert, k.labels, err)
	}
	tFail, err := firstSampleAbove(center, failures, base, t0)
	if err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(5 * time.Second)
	t1 := time.Now()
	if err := clearFault(center, id); err != nil {
		return 0, 0, 0, err
	}
	var gone time.Time
	if err := waitFor(120*time.Second, func() (bool, error) {
		_, ok, err := alertActiveAt(center, k.alert, k.labels)
		gone = time.Now()
		return !ok && err == nil, err
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("alert did not resolve: %w; %s", err, diagnose(center, k.location))
	}
	return tFail.Sub(t0).Seconds(), activeAt.Sub(t0).Seconds(), gone.Sub(t1).Seconds(), nil
}

// diagnose says what the center sees of location when a step timed out:
// the probe alerts firing, and the location's failures of the last 30 s
// by reason.
func diagnose(center, location string) string {
	var b strings.Builder
	if all, err := probeAlerts(center); err == nil {
		for _, a := range all {
			fmt.Fprintf(&b, "firing %v since %s; ", a.Labels, a.ActiveAt.Format(time.TimeOnly))
		}
	}
	for _, reason := range []string{"connect", "auth", "send", "ack_timeout", "delivery_timeout"} {
		v, err := scalar(center, fmt.Sprintf(`sum(increase(probe_failures_total{location=%q,reason=%q}[30s]))`, location, reason))
		if err == nil && v > 0 {
			fmt.Fprintf(&b, "%s failures in the last 30 s: %.0f; ", reason, v)
		}
	}
	return b.String()
}

func waitFor(timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := f()
		if ok {
			return nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	if last == nil {
		last = errors.New("timed out")
	}
	return last
}

func addFault(center, spec string) (string, error) {
	resp, err := http.Post(center+"/api/faults", "application/json", strings.NewReader(spec))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Fault struct{ ID string } `json:"fault"`
		Error string              `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("add fault: %s %s", resp.Status, out.Error)
	}
	return out.Fault.ID, nil
}

func clearFault(center, id string) error {
	req, _ := http.NewRequest(http.MethodDelete, center+"/api/faults/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

type apiAlert struct {
	Labels   map[string]string `json:"labels"`
	State    string            `json:"state"`
	ActiveAt time.Time         `json:"activeAt"`
}

func alerts(center string) ([]apiAlert, error) {
	var r struct {
		Data struct {
			Alerts []apiAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := get(center+"/api/v1/alerts", &r); err != nil {
		return nil, err
	}
	return r.Data.Alerts, nil
}

func probeAlerts(center string) ([]apiAlert, error) {
	all, err := alerts(center)
	var out []apiAlert
	for _, a := range all {
		if strings.HasPrefix(a.Labels["alertname"], "IMProbe") && a.State == "firing" {
			out = append(out, a)
		}
	}
	return out, err
}

func alertActiveAt(center, name string, labels map[string]string) (time.Time, bool, error) {
	all, err := probeAlerts(center)
	if err != nil {
		return time.Time{}, false, err
	}
	for _, a := range all {
		ok := a.Labels["alertname"] == name
		for k, v := range labels {
			ok = ok && a.Labels[k] == v
		}
		if ok {
			return a.ActiveAt, true, nil
		}
	}
	return time.Time{}, false, nil
}

// countProbeAlerts counts the probe alerts that were firing at some point
// in [from, to] (from the ALERTS series the rules write).
func countProbeAlerts(center string, from, to time.Time) (int, error) {
	q := fmt.Sprintf(`count(max_over_time(ALERTS{alertname=~"IMProbe.*",alertstate="firing"}[%ds]))`, int(to.Sub(from).Seconds())+1)
	v, err := scalarAt(center, q, to)
	if math.IsNaN(v) {
		return 0, err
	}
	return int(v), err
}

func scalar(center, q string) (float64, error) { return scalarAt(center, q, time.Time{}) }

func scalarAt(center, q string, at time.Time) (float64, error) {
	params := url.Values{"query": {q}}
	if !at.IsZero() {
		params.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := get(center+"/api/v1/query?"+params.Encode(), &r); err != nil {
		return math.NaN(), err
	}
	if len(r.Data.Result) == 0 {
		return math.NaN(), nil
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// firstSampleAbove is the time of the first sample of q, after t0, above
// base: a range query at 100 ms steps, each point the newest sample at or
// before it (the prober's samples come every second).
func firstSampleAbove(center, q string, base float64, t0 time.Time) (time.Time, error) {
	end := time.Now()
	params := url.Values{"query": {q}, "start": {ts(t0)}, "end": {ts(end)}, "step": {"0.1"}}
	var r struct {
		Data struct {
			Result []struct {
				Values [][2]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := get(center+"/api/v1/query_range?"+params.Encode(), &r); err != nil {
		return time.Time{}, err
	}
	for _, s := range r.Data.Result {
		for _, p := range s.Values {
			sec, _ := p[0].(float64)
			v, _ := strconv.ParseFloat(p[1].(string), 64)
			if v > base {
				return time.UnixMilli(int64(sec * 1000)), nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%s: no sample above %g since the fault", q, base)
}

func ts(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64) }

func get(u string, v any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s %s", u, resp.Status, buf.String())
	}
	return json.Unmarshal(buf.Bytes(), v)
}

type upProc struct {
	cmd    *exec.Cmd
	center string
	done   chan error
}

type startTimes struct{ printed, ready, data time.Duration }

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePair is a port whose next port is free too (the second gateway).
func freePair() int {
	for {
		p := freePort()
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l.Close()
			return p
		}
	}
}

// startUp runs imwatch up on free ports and times its start.
func startUp(bin, data string) (*upProc, startTimes, error) {
	var st startTimes
	center := "127.0.0.1:" + strconv.Itoa(freePort())
	cmd := exec.Command(bin, "up", "--data", data, "--listen", center,
		"--gateway-listen", "127.0.0.1:"+strconv.Itoa(freePair()), "--nats-listen", "127.0.0.1:"+strconv.Itoa(freePort()),
		"--logic-metrics-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, st, err
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, st, err
	}
	p := &upProc{cmd: cmd, center: "http://" + center, done: make(chan error, 1)}
	printed := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "imwatch is up.") {
				printed <- time.Since(began)
			}
		}
		p.done <- cmd.Wait()
	}()
	if err := waitFor(60*time.Second, func() (bool, error) {
		resp, err := http.Get(p.center + "/-/ready")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		p.stop()
		return nil, st, fmt.Errorf("imwatch up not ready: %w", err)
	}
	st.ready = time.Since(began)
	if err := waitFor(60*time.Second, func() (bool, error) {
		a, err := scalar(p.center, `count(probe_success)`)
		if err != nil || !(a >= 1) {
			return false, err
		}
		b, err := scalar(p.center, `sum(rate(imwatch_im_messages_total{stage="sent"}[1m]))`)
		return b > 0, err
	}); err != nil {
		p.stop()
		return nil, st, fmt.Errorf("no data in the center: %w", err)
	}
	st.data = time.Since(began)
	select {
	case st.printed = <-printed:
	case <-time.After(10 * time.Second):
	}
	return p, st, nil
}

func (p *upProc) stop() error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		return err
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New("imwatch up did not stop within 60s")
	}
}
