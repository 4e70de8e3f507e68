package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/cluster"
	"github.com/imwatch/imwatch/internal/probe"
)

// upProbeInterval is how often the probers of `imwatch up` send.
const upProbeInterval = 5 * time.Second

// upPushInterval is how often they hand their results to the center: a
// failed round reaches the rules within about a second (docs/faults.md,
// time to detect).
const upPushInterval = time.Second

// startUpProbers runs the probers of `imwatch up`: one per gateway, each a
// location of its own ("up-gw-1", "up-gw-2") with a probe account sending to
// itself through its gateway every 5 s, results into the center at
// centerURL through DATA/probe-buffer/LOCATION.
func startUpProbers(ctx context.Context, data, centerURL string, c *cluster.Cluster, secret []byte, log *slog.Logger) ([]*probe.Prober, error) {
	var out []*probe.Prober
	for i, u := range c.URLs() {
		loc := fmt.Sprintf("up-gw-%d", i+1)
		cfg := probe.Default()
		cfg.Location = loc
		cfg.Buffer = filepath.Join(data, "probe-buffer", loc)
		cfg.BufferMaxSize = 64 << 20
		cfg.Center.URL = centerURL
		cfg.Center.PushInterval = config.Duration(upPushInterval)
		cfg.Targets = []probe.Target{{
			Name: "imwatch-up", Protocol: probe.ProtoIMWatch, Address: u, Secret: secret,
			Interval: config.Duration(upProbeInterval), Timeout: config.Duration(probe.DefaultTimeout),
		}}
		p, err := probe.New(cfg, probe.Options{Log: log})
		if err == nil {
			err = p.Start(ctx)
		}
		if err != nil {
			stopUpProbers(context.Background(), out)
			return nil, fmt.Errorf("prober %s: %w", loc, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func stopUpProbers(ctx context.Context, ps []*probe.Prober) error {
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.Stop(ctx))
	}
	return errors.Join(errs...)
}
