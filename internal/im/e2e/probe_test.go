package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/pkg/imtrace"
)

// TestUpProbesBothGateways: `imwatch up` runs a prober per gateway, as two
// locations, whose results reach its center by remote write.
func TestUpProbesBothGateways(t *testing.T) {
	up := startUp(t, t.TempDir())
	m := regexp.MustCompile(`center: +(http://\S+)`).FindStringSubmatch(up.stdout())
	if m == nil {
		t.Fatalf("no center address in the output of imwatch up:\n%s", up.stdout())
	}
	imtest.Eventually(t, 60*time.Second, func() error {
		resp, err := http.Get(m[1] + "/api/v1/query?query=" + url.QueryEscape(`probe_success{protocol="imwatch"} == 1`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return err
		}
		locs := map[string]bool{}
		for _, s := range r.Data.Result {
			locs[s.Metric["location"]] = true
		}
		if !locs["up-gw-1"] || !locs["up-gw-2"] {
			return fmt.Errorf("successful probe locations in the center: %v", locs)
		}
		return nil
	})
	// Every round is a trace, and up's parts trace the probe message's
	// hops into it: from the probe client's send to the logic node's ACK.
	hops := []string{imtrace.SpanProbeRound, "im.probe.send", imtrace.SpanClientSend, imtrace.SpanGatewayReceive,
		imtrace.SpanLogicHandle, imtrace.SpanStoreAppend, imtrace.SpanGatewayPush, imtrace.SpanClientReceive,
		imtrace.SpanClientAck, imtrace.SpanLogicAck}
	imtest.Eventually(t, 60*time.Second, func() error {
		trs, err := centertest.Traces(m[1], "/api/traces?operation=im.probe.round&limit=100")
		if err != nil {
			return err
		}
		whole := map[string]bool{}
		for _, tr := range trs {
			have := map[string]int{}
			for _, s := range tr.Spans {
				have[s.Name]++
				if s.MissingParent {
					have["missing"]++
				}
			}
			ok := have["missing"] == 0
			for _, h := range hops {
				ok = ok && have[h] == 1
			}
			if ok && tr.Root.Name == imtrace.SpanProbeRound {
				whole[tr.Root.Instance] = true
			}
		}
		if !whole["up-gw-1"] || !whole["up-gw-2"] {
			return fmt.Errorf("locations with a probe round traced through every hop: %v (of %d rounds)", whole, len(trs))
		}
		return nil
	})
}

// TestProbeCommand: `imwatch probe` checks its config, probes, reloads on
// SIGHUP (keeping the old config when the new one is bad) and stops
// cleanly on SIGTERM.
func TestProbeCommand(t *testing.T) {
	c := startIM(t, "gw-p")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), imtest.Secret, 0o600); err != nil {
		t.Fatal(err)
	}
	target := func(name string) string {
		return "  - {name: " + name + ", protocol: imwatch, address: '" + wsURL(c.listen["gw-p"]) + "', secret_file: secret, interval: 300ms, timeout: 300ms}\n"
	}
	cfg := filepath.Join(dir, "probe.yml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("location: e2e\nbuffer: buf\ntargets:\n" + target("first"))
	check := startProc(t, "probe-check", "probe", "--config", cfg, "--config.check")
	if code := check.wait(30 * time.Second); code != 0 || !strings.Contains(check.stdout(), "OK (location e2e, 1 targets") {
		t.Fatalf("--config.check: exit %d: %s", code, check.stdout())
	}
	listen := "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
	p := startProc(t, "probe", "probe", "--config", cfg, "--listen", listen, "--log-level", "debug")
	p.waitLine("prober e2e listening on http://"+listen, 30*time.Second)
	received := func(target string) float64 {
		resp, err := http.Get("http://" + listen + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		re := regexp.MustCompile(`probe_messages_received_total\{location="e2e",protocol="imwatch",target="` + target + `"\} (\d+)`)
		if m := re.FindStringSubmatch(b.String()); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			return v
		}
		return 0
	}
	atLeast := func(target string, n float64) func() error {
		return func() error {
			if v := received(target); v < n {
				return fmt.Errorf("%s received %g, want %g", target, v, n)
			}
			return nil
		}
	}
	imtest.Eventually(t, 30*time.Second, atLeast("first", 3))
	write("location: e2e\nbuffer: buf\ntargets:\n" + target("first") + target("second"))
	p.signal(syscall.SIGHUP)
	imtest.Eventually(t, 30*time.Second, atLeast("second", 3))
	write("location: e2e\nbuffer: buf\ntargets: [\n")
	p.signal(syscall.SIGHUP)
	p.waitLog("config reload refused; keeping the running config", 10*time.Second)
	n := received("second")
	imtest.Eventually(t, 30*time.Second, atLeast("second", n+2))
	t0 := time.Now()
	p.signal(syscall.SIGTERM)
	if code := p.wait(3 * stopWithin); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.logTail(20))
	}
	if d := time.Since(t0); d > stopWithin {
		t.Errorf("took %s to stop", d)
	}
	if _, err := os.Stat(filepath.Join(dir, "buf", "metrics", "cursor")); err != nil {
		t.Errorf("the buffer was not flushed to disk: %v", err)
	}
}
