package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/imwatch/imwatch/internal/center"
	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/service"
	"github.com/nats-io/nats.go"
)

// centerStartTimeout allows for replaying a large write-ahead log.
const centerStartTimeout = 10 * time.Minute

func runCenter(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("center", "Runs the monitoring center: stores metrics (Prometheus tsdb), scrapes targets,\nreceives remote write, evaluates rules, sends alerts and serves the Prometheus HTTP API.\nReload the config with SIGHUP or POST /-/reload.", stderr)
	var lf logFlags
	lf.register(fs)
	file := fs.String("config", "", "config file (YAML, see docs/center.md); without it the defaults are used")
	listen := fs.String("listen", config.DefaultListen, "address of the HTTP API")
	check := fs.Bool("config.check", false, "check the config, its rule files and token files, then exit")
	faultsNATS := fs.String("faults-nats", "", "URL of the IM's NATS: take faults (POST /api/faults) and hand them to the IM parts run with --faults (docs/faults.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg, err := loadCenterConfig(*file)
	if err != nil {
		return err
	}
	if *check {
		files, _ := cfg.RuleFilePaths()
		name := *file
		if name == "" {
			name = "defaults"
		}
		fmt.Fprintf(stdout, "%s: OK (%d scrape targets, %d rule files, %d alertmanagers, %d webhooks, %d remote_write)\n",
			name, len(cfg.Scrape.Targets), len(files), len(cfg.Alerting.Alertmanagers), len(cfg.Alerting.Webhooks), len(cfg.RemoteWrite))
		return nil
	}
	cfg.Listen = *listen
	c, err := center.New(cfg, log)
	if err != nil {
		return err
	}
	if *faultsNATS != "" {
		nc, err := nats.Connect(*faultsNATS, nats.Name("imwatch center faults"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("--faults-nats %s: %w", *faultsNATS, err)
		}
		defer nc.Close() // after the center stopped: its stop clears the faults through it
		ctl, err := fault.NewNATSController(nc, log)
		if err != nil {
			return err
		}
		c.EnableFaults(ctl)
	}
	// Signals are caught from here on: one that arrives while the center
	// starts, or just after it said so, is handled, never the default action.
	stopCtx, stop := catchStopSignals()
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	g := service.NewGroup(log)
	defer g.Stop(stopTimeout)
	ctx, cancel := context.WithTimeout(stopCtx, centerStartTimeout)
	defer cancel()
	if err := g.Start(ctx, c); err != nil {
		if stopCtx.Err() != nil {
			log.Info("stopped while starting", "signal", stopReason(stopCtx))
			return nil
		}
		return err
	}
	fmt.Fprintf(stdout, "center listening on %s (storage %s)\n", c.URL(), cfg.Storage.Path)
	for {
		select {
		case <-hup:
			if err := c.Reload(); err == nil {
				log.Info("config reloaded on SIGHUP")
			} // a refused reload is logged by the center with its reason
		case <-stopCtx.Done():
			log.Info("stopping", "signal", stopReason(stopCtx))
			return g.Stop(stopTimeout)
		}
	}
}

func loadCenterConfig(file string) (config.Config, error) {
	if file != "" {
		return config.Load(file)
	}
	cfg := config.Default()
	wd, err := os.Getwd()
	if err != nil {
		return cfg, fmt.Errorf("working directory: %w", err)
	}
	return cfg, cfg.Resolve(wd)
}
