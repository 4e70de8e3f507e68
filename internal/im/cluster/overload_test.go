package cluster_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
	"github.com/imwatch/imwatch/internal/im/logic"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// A logic node runs at most MaxInflight requests at once and refuses the
// rest as overloaded, at once; once its requests are done, its workers
// take new ones.
func TestLogicRefusesOverMaxInflight(t *testing.T) {
	const inflight = 2
	c := imtest.StartCluster(t, "", 1, func(o *cluster.Options) {
		o.Faults = true
		o.Metrics = true
		o.TuneLogic = func(cfg *logic.Config) { cfg.MaxInflight = inflight }
	})
	reg := imtest.FaultRegistry(t, c.NATSURL, "logic-1")
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	send := func(id string) (bus.SendReply, error) {
		req := bus.SendRequest{From: "alice", Device: "d1", Gateway: "gw-1", ID: id, To: "bob", Body: "hi"}
		m, err := nc.Request(bus.SubjSend, bus.AppendSendRequest(nil, &req), 10*time.Second)
		if err != nil {
			return bus.SendReply{}, err
		}
		var r bus.SendReply
		return r, json.Unmarshal(m.Data, &r)
	}
	// Every request holds its slot at logic.handle, long enough for all of
	// them to arrive on a loaded machine.
	const hold = 5 * time.Second
	f := imtest.AddFault(t, reg, fault.Spec{Kind: fault.KindLatency, Hop: fault.HopLogicHandle, Instance: "logic-1",
		Delay: fault.Duration(hold)})
	const n = 6
	replies := make([]bus.SendReply, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			t0 := time.Now()
			r, err := send(fmt.Sprintf("m%d", i))
			if err != nil {
				t.Errorf("send m%d: %v", i, err)
			}
			replies[i], took[i] = r, time.Since(t0)
		})
	}
	wg.Wait()
	var ok, refused int
	for i, r := range replies {
		switch {
		case r.Code == "" && r.MsgID != "":
			ok++
			if took[i] < hold {
				t.Errorf("m%d stored in %s, before the fault's hold of %s", i, took[i], hold)
			}
		case r.Code == protocol.CodeOverloaded:
			refused++
			if took[i] >= hold {
				t.Errorf("m%d refused after %s: refusal should not wait for a slot", i, took[i])
			}
		default:
			t.Errorf("m%d: reply %+v", i, r)
		}
	}
	if ok != inflight || refused != n-inflight {
		t.Fatalf("%d stored and %d refused of %d at once; want %d and %d", ok, refused, n, inflight, n-inflight)
	}
	// Counted: imwatch_im_failures_total{operation="send",reason="overloaded"}.
	if got := failures(t, "http://"+c.LogicMetrics[0].Addr()+"/metrics", "send", protocol.CodeOverloaded); got != n-inflight {
		t.Errorf("logic counted %v overloaded sends; want %d", got, n-inflight)
	}
	if _, err := reg.Clear(f.ID); err != nil {
		t.Fatal(err)
	}
	// The slots are free again: the node takes requests.
	imtest.Eventually(t, 10*time.Second, func() error {
		for i := range 2 * inflight {
			r, err := send(fmt.Sprintf("after%d", i))
			if err != nil || r.Code != "" {
				return fmt.Errorf("after the fault: %+v, %v", r, err)
			}
		}
		return nil
	})
}

// failures is the value of imwatch_im_failures_total for operation op and
// reason in the exposition at url; 0 when there is no such series.
func failures(t *testing.T, url, op, reason string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	var sum float64
	for _, m := range fams["imwatch_im_failures_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["operation"] == op && labels["reason"] == reason {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
