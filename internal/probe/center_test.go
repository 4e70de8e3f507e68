package probe

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// With the center down for a minute, every result arrives afterwards: the
// metrics wait in the prober's on-disk buffer and are remote-written, in
// order, once a center is back on the same address and storage.
func TestCenterOutageOfAMinute(t *testing.T) {
	outage := time.Minute
	if s := os.Getenv("IMWATCH_PROBE_OUTAGE"); s != "" { // shorter by hand while working on it
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		outage = d
	}
	c := imtest.StartCluster(t, "", 1)
	ccfg := centertest.Config(t)
	ccfg.Listen = "127.0.0.1:" + strconv.Itoa(imtest.FreePort(t))
	startCenter := func() *center.Center {
		cen, err := center.New(ccfg, imtest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cen.Start(ctx); err != nil {
			t.Fatalf("start center: %v", err)
		}
		return cen
	}
	cen := startCenter()
	t.Cleanup(func() { cen.Stop(context.Background()) })
	url := cen.URL()

	cfg := Config{Targets: []Target{imwatchTarget(t, "local-im", c.URLs()[0], 500*time.Millisecond, 500*time.Millisecond)}}
	cfg.Center.URL = url
	cfg.Center.PushInterval = config.Duration(time.Second)
	p := startProber(t, cfg, Options{})
	const q = `probe_messages_sent_total{target="local-im",job="imwatch-probe"}`
	imtest.Eventually(t, 30*time.Second, func() error {
		s, err := centertest.Query(url, q, time.Time{})
		if err != nil || len(s) == 0 {
			return fmt.Errorf("no probe results in the center yet: %v", err)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := cen.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	down := time.Now()
	// Poll the prober while the center is away: results pile up in the buffer.
	imtest.Eventually(t, outage+30*time.Second, func() error {
		st := p.pipe.qm.Stats()
		if d := time.Since(down); d < outage {
			return fmt.Errorf("center down for %s of %s; %d records buffered", d.Round(time.Second), outage, st.Pending)
		}
		if want := int(outage/time.Second) - 5; st.Pending < want {
			return fmt.Errorf("%d records buffered, want at least %d", st.Pending, want)
		}
		return nil
	})
	up := time.Now()
	sentAtRestart := metricValue(t, p, "probe_messages_sent_total", map[string]string{"target": "local-im"})
	cen = startCenter()
	imtest.Eventually(t, 60*time.Second, func() error {
		if st := p.pipe.qm.Stats(); st.Pending > 0 {
			return fmt.Errorf("%d records still buffered", st.Pending)
		}
		return nil
	})
	// A sample for every push during the outage, none dropped.
	window := up.Sub(down)
	s, err := centertest.Query(url, fmt.Sprintf("count_over_time(%s[%dms])", q, window.Milliseconds()), up)
	if err != nil || len(s) != 1 {
		t.Fatalf("query: %v %v", s, err)
	}
	n, _ := strconv.ParseFloat(s[0].Value[1].(string), 64)
	if want := window.Seconds() - 3; n < want {
		t.Errorf("%g samples of the outage's %s in the center, want at least %g", n, window.Round(time.Second), want)
	}
	if st := p.pipe.qm.Stats(); st.Dropped[DropFull]+st.Dropped[DropCorrupt]+st.Dropped[DropRefused] != 0 {
		t.Errorf("buffer dropped records: %v", st.Dropped)
	}
	// The last value written before the restart is there as the prober had it.
	s, err = centertest.Query(url, q, up)
	if err != nil || len(s) != 1 {
		t.Fatalf("query: %v %v", s, err)
	}
	if v, _ := strconv.ParseFloat(s[0].Value[1].(string), 64); v > sentAtRestart || v < sentAtRestart-3 {
		t.Errorf("center has %g messages sent at the restart, the prober had %g", v, sentAtRestart)
	}
}
