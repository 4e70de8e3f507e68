package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"
)

// Config is everything the agent can be told. DefaultConfig holds the
// defaults; the command line (imwatch agent) maps one flag to each field.
type Config struct {
	// ProcPath, SysPath and RootPath are where procfs, sysfs and the root
	// filesystem are mounted (--path.procfs, --path.sysfs, --path.rootfs).
	// Every read goes through them, so a test can use a fixture tree and a
	// containerised agent can read the host's.
	ProcPath string
	SysPath  string
	RootPath string

	// Enabled turns collectors on (true) or off (false) by name
	// (--collector.NAME, --no-collector.NAME). A collector not in the map
	// is on unless DisableDefaults (--collector.disable-defaults).
	Enabled         map[string]bool
	DisableDefaults bool

	// MaxSeries bounds the series in one scrape (--max-series). Collectors
	// that would go over it are dropped whole, last in priority order first,
	// counted in imwatch_agent_series_dropped_total and logged.
	MaxSeries int
	// MaxConcurrentScrapes bounds scrapes in flight; more are refused with
	// 503 and counted in imwatch_agent_scrapes_refused_total.
	MaxConcurrentScrapes int

	// CPUGuest adds node_cpu_guest_seconds_total (--collector.cpu.guest).
	CPUGuest bool
	// DiskDeviceExclude is a regexp of block devices to leave out
	// (--collector.diskstats.device-exclude).
	DiskDeviceExclude string
	// FSMountPointsExclude and FSTypesExclude are regexps of mount points and
	// filesystem types to leave out (--collector.filesystem.mount-points-exclude,
	// --collector.filesystem.fs-types-exclude).
	FSMountPointsExclude string
	FSTypesExclude       string
	// StatfsTimeout bounds one statfs call; a mount that does not answer in
	// time is reported with node_filesystem_device_error 1 and not asked
	// again until its call returns (--collector.filesystem.statfs-timeout).
	StatfsTimeout time.Duration
	// NetDeviceExclude is a regexp of network interfaces to leave out
	// (--collector.netdev.device-exclude).
	NetDeviceExclude string
	// VMStatFields is a regexp of /proc/vmstat fields to export
	// (--collector.vmstat.fields).
	VMStatFields string
	// ProcessNames are the process names the process collector reports
	// (--collector.process.names), matched against the kernel's comm and,
	// for names longer than comm's 15 characters, the executable's base name.
	ProcessNames []string
	// MaxProcesses bounds how many processes it reports, lowest PIDs first
	// (--collector.process.max).
	MaxProcesses int

	// PageSize converts pages to bytes (sockstat memory, process RSS).
	PageSize int
	// Log receives the agent's logs; nil discards them.
	Log *slog.Logger
}

// Defaults. The exclusion regexps are node_exporter's defaults, so the
// same devices, mounts and fields are reported as there.
const (
	DefaultListen               = "127.0.0.1:9101"
	DefaultMaxSeries            = 1000
	DefaultMaxConcurrentScrapes = 4
	DefaultDiskDeviceExclude    = `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`
	DefaultFSMountPointsExclude = `^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`
	DefaultFSTypesExclude       = `^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$`
	DefaultStatfsTimeout        = 5 * time.Second
	DefaultVMStatFields         = `^(oom_kill|pgpg|pswp|pg.*fault).*`
	DefaultMaxProcesses         = 16
)

// DefaultConfig returns the defaults: every collector on, the host's own
// /proc, /sys and /.
func DefaultConfig() Config {
	return Config{
		ProcPath:             "/proc",
		SysPath:              "/sys",
		RootPath:             "/",
		Enabled:              map[string]bool{},
		MaxSeries:            DefaultMaxSeries,
		MaxConcurrentScrapes: DefaultMaxConcurrentScrapes,
		CPUGuest:             true,
		DiskDeviceExclude:    DefaultDiskDeviceExclude,
		FSMountPointsExclude: DefaultFSMountPointsExclude,
		FSTypesExclude:       DefaultFSTypesExclude,
		StatfsTimeout:        DefaultStatfsTimeout,
		VMStatFields:         DefaultVMStatFields,
		ProcessNames:         []string{"imwatch"},
		MaxProcesses:         DefaultMaxProcesses,
		PageSize:             os.Getpagesize(),
	}
}

func (c Config) enabled(name string) bool {
	if on, ok := c.Enabled[name]; ok {
		return on
	}
	return !c.DisableDefaults
}

// Validate says what is wrong with c, naming the flag to fix.
func (c Config) Validate() error {
	var errs []error
	for name := range c.Enabled {
		if !knownCollector(name) {
			errs = append(errs, fmt.Errorf("unknown collector %q", name))
		}
	}
	for _, re := range []struct{ flag, expr string }{
		{"--collector.diskstats.device-exclude", c.DiskDeviceExclude},
		{"--collector.filesystem.mount-points-exclude", c.FSMountPointsExclude},
		{"--collector.filesystem.fs-types-exclude", c.FSTypesExclude},
		{"--collector.netdev.device-exclude", c.NetDeviceExclude},
		{"--collector.vmstat.fields", c.VMStatFields},
	} {
		if _, err := regexp.Compile(re.expr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", re.flag, re.expr, err))
		}
	}
	if own := reservedSeries(len(collectors)); c.MaxSeries < own {
		errs = append(errs, fmt.Errorf("--max-series %d: must be at least %d (the agent's own series)", c.MaxSeries, own))
	}
	if c.MaxConcurrentScrapes < 1 {
		errs = append(errs, fmt.Errorf("max concurrent scrapes %d: must be at least 1", c.MaxConcurrentScrapes))
	}
	if c.StatfsTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--collector.filesystem.statfs-timeout %s: must be positive", c.StatfsTimeout))
	}
	if c.enabled("process") {
		if len(c.ProcessNames) == 0 {
			errs = append(errs, errors.New("--collector.process.names: give at least one name, or turn the collector off with --no-collector.process"))
		}
		for _, n := range c.ProcessNames {
			if n == "" {
				errs = append(errs, errors.New("--collector.process.names: empty name"))
			}
		}
		if c.MaxProcesses < 1 {
			errs = append(errs, fmt.Errorf("--collector.process.max %d: must be at least 1", c.MaxProcesses))
		}
	}
	if c.PageSize <= 0 {
		errs = append(errs, fmt.Errorf("page size %d: must be positive", c.PageSize))
	}
	return errors.Join(errs...)
}
