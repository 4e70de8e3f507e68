package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/imwatch/imwatch/internal/agent"
	"github.com/imwatch/imwatch/internal/procmem"
	"github.com/imwatch/imwatch/internal/service"
)

func runAgent(args []string, stdout, stderr io.Writer) error {
	sig, stopSig := catchStopSignals()
	defer stopSig()
	fs := newFlags("agent", "Serves this host's system metrics, under node_exporter's names, and the imwatch\n"+
		"processes' metrics on http://LISTEN/metrics. See docs/metrics.md.", stderr)
	var lf logFlags
	lf.register(fs)
	cfg := agent.DefaultConfig()
	listen := fs.String("listen", agent.DefaultListen, "address to serve /metrics on")
	fs.StringVar(&cfg.ProcPath, "path.procfs", cfg.ProcPath, "where procfs is mounted")
	fs.StringVar(&cfg.SysPath, "path.sysfs", cfg.SysPath, "where sysfs is mounted")
	fs.StringVar(&cfg.RootPath, "path.rootfs", cfg.RootPath, "where the root filesystem is mounted (filesystem sizes are read under it)")
	fs.IntVar(&cfg.MaxSeries, "max-series", cfg.MaxSeries, "most series per scrape; collectors that would go over it are dropped, last in the list first")
	fs.BoolVar(&cfg.DisableDefaults, "collector.disable-defaults", false, "turn every collector off but those turned on with --collector.NAME")
	for _, c := range agent.Collectors() {
		fs.Var(collectorFlag{cfg.Enabled, c.Name, true}, "collector."+c.Name, "turn on the "+c.Name+" collector: "+c.Help+" (default on)")
		fs.Var(collectorFlag{cfg.Enabled, c.Name, false}, "no-collector."+c.Name, "turn off the "+c.Name+" collector")
	}
	fs.BoolVar(&cfg.CPUGuest, "collector.cpu.guest", cfg.CPUGuest, "add node_cpu_guest_seconds_total")
	fs.StringVar(&cfg.DiskDeviceExclude, "collector.diskstats.device-exclude", cfg.DiskDeviceExclude, "regexp of block devices to leave out")
	fs.StringVar(&cfg.FSMountPointsExclude, "collector.filesystem.mount-points-exclude", cfg.FSMountPointsExclude, "regexp of mount points to leave out")
	fs.StringVar(&cfg.FSTypesExclude, "collector.filesystem.fs-types-exclude", cfg.FSTypesExclude, "regexp of filesystem types to leave out")
	fs.DurationVar(&cfg.StatfsTimeout, "collector.filesystem.statfs-timeout", cfg.StatfsTimeout, "longest wait for statfs on one mount point; a mount that takes longer is reported failed")
	fs.StringVar(&cfg.NetDeviceExclude, "collector.netdev.device-exclude", cfg.NetDeviceExclude, "regexp of network interfaces to leave out (default: none)")
	fs.StringVar(&cfg.VMStatFields, "collector.vmstat.fields", cfg.VMStatFields, "regexp of /proc/vmstat fields to report")
	names := fs.String("collector.process.names", strings.Join(cfg.ProcessNames, ","), "comma-separated names of the processes the process collector reports")
	fs.IntVar(&cfg.MaxProcesses, "collector.process.max", cfg.MaxProcesses, "most processes the process collector reports, lowest PIDs first")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg.ProcessNames = nil
	for _, n := range strings.Split(*names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.ProcessNames = append(cfg.ProcessNames, n)
		}
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg.Log = log
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	g := service.NewGroup(log)
	defer g.Stop(stopTimeout)
	srv := agent.NewServer(*listen, a)
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	defer cancel()
	if err := g.Start(ctx, srv); err != nil {
		if sig.Err() != nil {
			log.Info("stopped during start-up", "signal", stopReason(sig))
			return g.Stop(stopTimeout)
		}
		return err
	}
	if st, err := procmem.ReleaseStartupPages(); err != nil {
		log.Debug("could not release start-up pages", "err", err)
	} else {
		log.Debug("released start-up pages", "mappings", st.Mappings, "bytes", st.Bytes)
	}
	fmt.Fprintf(stdout, "agent serving metrics on http://%s/metrics (collectors: %s)\n", srv.Addr(), strings.Join(a.CollectorNames(), " "))
	<-sig.Done()
	log.Info("stopping", "signal", stopReason(sig))
	return g.Stop(stopTimeout)
}

// collectorFlag is --collector.NAME (on) or --no-collector.NAME (off); the
// last one given for a collector wins.
type collectorFlag struct {
	enabled map[string]bool
	name    string
	on      bool
}

func (f collectorFlag) String() string   { return "" }
func (f collectorFlag) IsBoolFlag() bool { return true }

func (f collectorFlag) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	f.enabled[f.name] = v == f.on
	return nil
}
