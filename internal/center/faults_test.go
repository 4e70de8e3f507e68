package center_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// faultCenter is a center taking faults for a real in-process IM cluster
// over its NATS, as `imwatch up` wires it.
func faultCenter(t *testing.T) (*center.Center, *cluster.Cluster) {
	t.Helper()
	im := imtest.StartCluster(t, "", 2, func(o *cluster.Options) { o.Faults = true })
	nc, err := nats.Connect(im.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctl, err := fault.NewNATSController(nc, imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	c, err := center.New(centertest.Config(t), imtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	c.EnableFaults(ctl)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.Stop(ctx)
	})
	imtest.Eventually(t, 10*time.Second, func() error {
		if n := len(c.Faults().Instances()); n != 3 {
			return fmt.Errorf("%d instances", n)
		}
		return nil
	})
	return c, im
}

func do(t *testing.T, method, url, ctype string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFaultAPI(t *testing.T) {
	c, _ := faultCenter(t)
	base := c.URL()
	const js = "application/json"
	type tc struct {
		name         string
		method, path string
		ctype, body  string
		code         int
		want         string // substring of the answer
	}
	cases := []tc{
		{"add drop", "POST", "/api/faults", js, `{"kind":"drop","hop":"gateway.receive","instance":"gw-1","percent":50,"duration":"1m"}`, 201, `"percent":50`},
		{"same again", "POST", "/api/faults", js, `{"kind":"drop","hop":"gateway.receive","instance":"gw-1"}`, 409, "clear it first"},
		{"add without content type", "POST", "/api/faults", "", `{"kind":"blackhole","instance":"gw-2","duration":"30s"}`, 201, `"kind":"blackhole"`},
		{"latency default delay", "POST", "/api/faults", js, `{"kind":"latency","hop":"store.append","instance":"logic-1"}`, 201, `"delay":"1s"`},
		{"unknown instance", "POST", "/api/faults", js, `{"kind":"stop","instance":"gw-9"}`, 400, "instances now: gw-1 (gateway), gw-2 (gateway), logic-1 (logic)"},
		{"hop of the other service", "POST", "/api/faults", js, `{"kind":"drop","hop":"logic.handle","instance":"gw-2"}`, 400, "gw-2 is a gateway"},
		{"unknown field", "POST", "/api/faults", js, `{"kind":"stop","instance":"gw-1","forever":true}`, 400, `unknown field \"forever\"`},
		{"bad hop", "POST", "/api/faults", js, `{"kind":"drop","hop":"moon","instance":"gw-1"}`, 400, `hop \"moon\"`},
		{"bad duration", "POST", "/api/faults", js, `{"kind":"stop","instance":"gw-1","duration":"2h"}`, 400, "duration 2h0m0s: want 1s to 1h0m0s"},
		{"two objects", "POST", "/api/faults", js, `{"kind":"stop","instance":"gw-1"}{}`, 400, "one JSON object"},
		{"not JSON", "POST", "/api/faults", "text/plain", `kind=stop`, 415, "application/json"},
		{"too big", "POST", "/api/faults", js, `{"kind":"stop","instance":"` + strings.Repeat("x", 5000) + `"}`, 413, "over 4096 bytes"},
		{"bad state", "GET", "/api/faults?state=gone", "", "", 400, "want active or all"},
		{"unknown id", "DELETE", "/api/faults/nope", "", "", 404, "no such fault"},
		{"list", "GET", "/api/faults", "", "", 200, `"instances":[{"name":"gw-1"`},
	}
	var ids []string
	for _, x := range cases {
		code, body := do(t, x.method, base+x.path, x.ctype, []byte(x.body))
		if code != x.code || !strings.Contains(body, x.want) {
			t.Errorf("%s: %d %s, want %d with %q", x.name, code, body, x.code, x.want)
		}
		if code == 201 {
			var out struct{ Fault fault.Fault }
			if err := json.Unmarshal([]byte(body), &out); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, out.Fault.ID)
		}
	}
	if len(ids) != 3 {
		t.Fatalf("added %d faults, want 3", len(ids))
	}
	// The faults are in the store, as imwatch_fault_active.
	imtest.Eventually(t, 10*time.Second, func() error {
		s, err := centertest.Query(base, `imwatch_fault_active{kind="drop",hop="gateway.receive",instance="gw-1"} == 1`, time.Now())
		if err != nil {
			return err
		}
		if len(s) != 1 {
			return errors.New("imwatch_fault_active of the drop not in the store")
		}
		return nil
	})
	if code, body := do(t, "GET", base+"/api/faults/"+ids[0], "", nil); code != 200 || !strings.Contains(body, `"state":"active"`) || !strings.Contains(body, `"applied":true`) && !strings.Contains(body, `"applied":false`) {
		t.Errorf("get: %d %s", code, body)
	}
	if code, body := do(t, "DELETE", base+"/api/faults/"+ids[0], "", nil); code != 200 || !strings.Contains(body, `"state":"cleared"`) {
		t.Errorf("delete: %d %s", code, body)
	}
	if code, body := do(t, "POST", base+"/api/faults/"+ids[1]+"/clear", "", nil); code != 200 || !strings.Contains(body, `"state":"cleared"`) {
		t.Errorf("post clear: %d %s", code, body)
	}
	// Gone from the store at once (a staleness marker), not after 5 minutes.
	imtest.Eventually(t, 10*time.Second, func() error {
		s, err := centertest.Query(base, `imwatch_fault_active{instance="gw-1"}`, time.Now())
		if err != nil {
			return err
		}
		if len(s) != 0 {
			return errors.New("imwatch_fault_active of the cleared drop still in the store")
		}
		return nil
	})
	code, body := do(t, "GET", base+"/api/faults?state=active", "", nil)
	if code != 200 || strings.Count(body, `"id"`) != 1 || !strings.Contains(body, ids[2]) {
		t.Errorf("active list: %d %s", code, body)
	}
	if _, body := do(t, "GET", base+"/ui/features.json", "", nil); !strings.Contains(body, `"faults":true`) {
		t.Errorf("features: %s", body)
	}
	if _, body := do(t, "GET", base+"/metrics", "", nil); !strings.Contains(body, `imwatch_faults_started_total{kind="drop"} 1`) ||
		!strings.Contains(body, `imwatch_fault_requests_refused_total{reason="conflict"} 1`) {
		t.Errorf("metrics lack the fault counters")
	}
}

// TestNoFaultAPIWithoutController: a center not wired to an IM serves no
// fault API, and its UI says so.
func TestNoFaultAPIWithoutController(t *testing.T) {
	c := centertest.Start(t, centertest.Config(t))
	if code, _ := do(t, "POST", c.URL()+"/api/faults", "application/json", []byte(`{"kind":"stop","instance":"gw-1"}`)); code != 404 && code != 405 {
		t.Errorf("POST /api/faults: %d", code)
	}
	if _, body := do(t, "GET", c.URL()+"/ui/features.json", "", nil); !strings.Contains(body, `"faults":false`) {
		t.Errorf("features: %s", body)
	}
}

// FuzzDecodeFaultSpec: any body is a spec or an ErrInvalid, never a panic.
func FuzzDecodeFaultSpec(f *testing.F) {
	f.Add([]byte(`{"kind":"drop","hop":"gateway.receive","instance":"gw-1","percent":50,"duration":"1m"}`))
	f.Add([]byte(`{"kind":"latency","hop":"store.append","instance":"logic-1","delay":"250ms"}`))
	f.Add([]byte(`{"kind":"stop","instance":"gw-1"}{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		spec, err := center.DecodeFaultSpec(body)
		if err != nil {
			if !errors.Is(err, fault.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		_ = spec.Normalize()
	})
}
