package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/agent"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

func withMetrics(o *cluster.Options) { o.Metrics = true }

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return body
}

// The IM metric set of every part passes promtool's lint, after traffic has
// filled its label sets.
func TestMetricsPassPromtool(t *testing.T) {
	c := imtest.StartCluster(t, "", 1, withMetrics)
	alice := imtest.Dial(t, c.URLs(), "alice", "phone")
	bob := imtest.Dial(t, c.URLs(), "bob", "phone")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := alice.Send(ctx, "bob", "hi"); err != nil {
		t.Fatal(err)
	}
	imtest.Receive(t, bob, 1, 10*time.Second)
	if _, err := alice.SendGroup(ctx, "no-such-group", "x"); err == nil {
		t.Fatal("send to a group that does not exist was accepted")
	}
	urls := map[string]string{
		"gateway": "http://" + c.Gateways[0].Addr() + "/metrics",
		"logic":   "http://" + c.LogicMetrics[0].Addr() + "/metrics",
	}
	for part, url := range urls {
		imtest.Eventually(t, 10*time.Second, func() error {
			body := string(get(t, url))
			for _, want := range []string{`imwatch_im_messages_total{kind="direct",service="` + part, "imwatch_im_stage_duration_seconds_bucket", "imwatch_im_failures_total{"} {
				if !strings.Contains(body, want) {
					return fmt.Errorf("%s: no %s yet", part, want)
				}
			}
			return nil
		})
		if out := imtest.PromtoolCheckMetrics(t, get(t, url)); strings.TrimSpace(out) != "" {
			t.Errorf("promtool check metrics on %s /metrics:\n%s", part, out)
		}
	}
}

// A real Prometheus scrapes the agent, both gateways and the logic node; after
// a known number of messages, PromQL over what it scraped counts exactly them,
// for the cluster and per instance.
func TestPrometheusCountsMessages(t *testing.T) {
	c := imtest.StartCluster(t, "", 2, withMetrics)
	a, err := agent.New(agent.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	as := agent.NewServer("127.0.0.1:0", a)
	if err := as.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { as.Stop(context.Background()) })
	gw1, gw2 := c.Gateways[0].Addr(), c.Gateways[1].Addr()
	prom := imtest.StartPrometheus(t, map[string][]string{
		"imwatch-gateway": {gw1, gw2},
		"imwatch-logic":   {c.LogicMetrics[0].Addr()},
		"imwatch-agent":   {as.Addr()},
	})
	imtest.Eventually(t, 60*time.Second, func() error {
		n, err := prom.Value(`count(up == 1)`)
		if err != nil {
			return err
		}
		if n != 4 {
			return fmt.Errorf("%v targets up, want 4", n)
		}
		return nil
	})
	urls := c.URLs()
	alice := imtest.Dial(t, urls[:1], "alice", "phone")
	bob := imtest.Dial(t, urls[1:], "bob", "phone")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	total := 0
	for _, n := range []int{37, 25} {
		for i := 0; i < n; i++ {
			if _, err := alice.Send(ctx, "bob", fmt.Sprintf("m%d", total+i)); err != nil {
				t.Fatal(err)
			}
		}
		imtest.Receive(t, bob, n, 20*time.Second)
		total += n
		want := float64(total)
		checks := []string{
			`sum(imwatch_im_messages_total{job="imwatch-gateway",stage="sent"})`,
			`sum(imwatch_im_messages_total{job="imwatch-logic",stage="stored"})`,
			`sum(imwatch_im_messages_total{job="imwatch-logic",stage="pushed"})`,
			`sum(imwatch_im_messages_total{job="imwatch-gateway",stage="delivered"})`,
			`sum(imwatch_im_messages_total{job="imwatch-logic",stage="acked"})`,
			fmt.Sprintf(`sum(imwatch_im_messages_total{instance=%q,stage="delivered"})`, gw2),
			fmt.Sprintf(`sum(imwatch_im_messages_total{instance=%q,stage="sent"})`, gw1),
			`sum(imwatch_im_e2e_duration_seconds_count{kind="direct"})`,
		}
		imtest.Eventually(t, 30*time.Second, func() error {
			for _, q := range checks {
				v, err := prom.Value(q)
				if err != nil {
					return err
				}
				if v != want {
					return fmt.Errorf("%s = %v, want %v", q, v, want)
				}
			}
			return nil
		})
		// Nothing was delivered through the sender's gateway.
		if res, err := prom.Query(fmt.Sprintf(`imwatch_im_messages_total{instance=%q,stage="delivered"} > 0`, gw1)); err != nil || len(res) != 0 {
			t.Fatalf("deliveries counted on the sender's gateway: %v %v", res, err)
		}
	}
	if v, err := prom.Value(`sum(imwatch_im_connections{job="imwatch-gateway"})`); err != nil || v != 2 {
		t.Fatalf("connections = %v (%v), want 2", v, err)
	}
	if v, err := prom.Value(fmt.Sprintf(`count(node_load1{instance=%q})`, as.Addr())); err != nil || v != 1 {
		t.Fatalf("agent's node_load1: %v (%v)", v, err)
	}
}
