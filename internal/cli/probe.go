package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/imwatch/imwatch/internal/probe"
	"github.com/imwatch/imwatch/internal/service"
)

func runProbe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("probe", "Runs the active prober: probe accounts send messages to themselves through the IM\n(imwatch, XMPP, MQTT) and time them; results go to the center through an on-disk buffer.\nReload the config with SIGHUP or POST /-/reload.", stderr)
	var lf logFlags
	lf.register(fs)
	file := fs.String("config", "", "config file (YAML, see docs/probe.md); required")
	listen := fs.String("listen", probe.DefaultListen, "address of /metrics and /-/reload")
	check := fs.Bool("config.check", false, "check the config and its credential files, then exit")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return usagef("--config is required (see docs/probe.md)")
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg, err := probe.Load(*file)
	if err != nil {
		return err
	}
	if *check {
		accounts := 0
		for _, t := range cfg.Targets {
			accounts += len(t.Accounts)
		}
		fmt.Fprintf(stdout, "%s: OK (location %s, %d targets, %d accounts)\n", *file, cfg.Location, len(cfg.Targets), accounts)
		return nil
	}
	p, err := probe.New(cfg, probe.Options{Log: log})
	if err != nil {
		return err
	}
	stopCtx, stop := catchStopSignals()
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	g := service.NewGroup(log)
	defer g.Stop(stopTimeout)
	if err := g.Start(stopCtx, p); err != nil {
		return err
	}
	hs := &service.HTTP{N: "probe http", Listen: *listen, Handler: p.Handler(), Log: log}
	if err := g.Start(stopCtx, hs); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "prober %s listening on http://%s (metrics /metrics), %d targets\n", cfg.Location, hs.Addr(), len(cfg.Targets))
	for {
		select {
		case <-hup:
			_ = p.Reload() // a refused reload is logged with its reason
		case <-stopCtx.Done():
			log.Info("stopping", "signal", stopReason(stopCtx))
			return g.Stop(stopTimeout)
		}
	}
}
