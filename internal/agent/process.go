package agent

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// processCollector reports CPU, memory, file descriptors and threads of the
// imwatch processes on the host: those whose name is one of
// Config.ProcessNames. At most Config.MaxProcesses are reported, lowest
// PIDs first; imwatch_process_matched says how many there were.
//
// A process is matched on the kernel's comm, the executable's name cut to
// 15 characters; for a longer configured name the executable's base name
// must match too. Reading comm is one small read per process on the host,
// which on a host with many processes outweighs the rest of a scrape. So a
// process found not to match is asked again only every commRecheck scrapes
// (spread over the scrapes by PID): a new process is found at the first
// scrape after it starts, one that becomes imwatch by exec() under its old
// PID within commRecheck scrapes. A matching process is checked at every
// scrape from its stat, which holds comm too.
type processCollector struct {
	fs       procfs.FS
	names    []string
	max      int
	pageSize float64

	// mu serialises Update: the state below carries from scrape to scrape.
	mu       sync.Mutex
	scrape   int
	seen     map[int]*seenProc // PIDs of the last scrape
	bootTime float64           // 0 until read

	cpu, rss, vsize, fds, maxFDs, threads, start, matched *prometheus.Desc
}

// userHZ is the unit of the CPU times in /proc/PID/stat: 100 on every
// Linux architecture (USER_HZ, not the kernel's HZ).
const userHZ = 100

// commLen is the longest name the kernel keeps in comm.
const commLen = 15

// commRecheck is how often, in scrapes, a process that did not match is
// asked its name again, and a matching one its command line and limits.
const commRecheck = 10

// seenProc is what the last look at a PID found.
type seenProc struct {
	name    string // the configured name it matched; "" for none
	checked int    // scrape of the last look at comm (or at the details below)

	// Of a matching process, read again every commRecheck scrapes.
	detailsRead bool
	command     string // the command label
	maxFDs      float64
	hasMaxFDs   bool
}

func newProcessCollector(e *env) (Collector, error) {
	labels := []string{"name", "pid", "command"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("imwatch_process_"+name, help, labels, nil)
	}
	return &processCollector{
		fs:       e.proc,
		names:    e.cfg.ProcessNames,
		max:      e.cfg.MaxProcesses,
		pageSize: float64(e.cfg.PageSize),
		seen:     map[int]*seenProc{},
		cpu:      d("cpu_seconds_total", "CPU time the process used, user and system, in seconds."),
		rss:      d("resident_memory_bytes", "Resident memory of the process in bytes."),
		vsize:    d("virtual_memory_bytes", "Virtual memory of the process in bytes."),
		fds:      d("open_fds", "Open file descriptors of the process."),
		maxFDs:   d("max_fds", "Soft limit on the process's open file descriptors."),
		threads:  d("threads", "Threads of the process."),
		start:    d("start_time_seconds", "When the process started, in seconds since the Unix epoch."),
		matched: prometheus.NewDesc("imwatch_process_matched",
			"Processes on the host with this name, reported or not (see --collector.process.max).", []string{"name"}, nil),
	}, nil
}

type matchedProc struct {
	p procfs.Proc
	s *seenProc
}

func (c *processCollector) Update(ch chan<- prometheus.Metric) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bootTime == 0 {
		// The boot time does not change while the host runs.
		st, err := c.fs.Stat()
		if err != nil {
			return fmt.Errorf("process: boot time: %w", err)
		}
		c.bootTime = float64(st.BootTime)
	}
	procs, err := c.fs.AllProcs()
	if err != nil {
		return fmt.Errorf("process: %w", err)
	}
	c.scrape++
	found := c.match(procs)
	sort.Slice(found, func(i, j int) bool { return found[i].p.PID < found[j].p.PID })
	counts := make(map[string]int, len(c.names))
	reported := 0
	for _, m := range found {
		if reported == c.max {
			counts[m.s.name]++
			continue
		}
		st, err := m.p.Stat()
		if err != nil {
			delete(c.seen, m.p.PID) // exited since the directory was read
			continue
		}
		// The name in stat is comm: a process that matched before is
		// checked here, without reading comm again.
		if name, _ := matchProcess(c.names, st.Comm, m.p.Executable); name != m.s.name {
			*m.s = seenProc{name: name, checked: c.scrape}
			if name == "" {
				continue
			}
		}
		counts[m.s.name]++
		c.emitProcess(ch, m, st)
		reported++
	}
	for _, n := range c.names {
		ch <- prometheus.MustNewConstMetric(c.matched, prometheus.GaugeValue, float64(counts[n]), n)
	}
	return nil
}

// match finds the processes with a configured name: those that matched
// last time, and of the others, each new PID and every commRecheck scrapes
// each old one, by reading comm.
func (c *processCollector) match(procs procfs.Procs) []matchedProc {
	seen := make(map[int]*seenProc, len(procs))
	var found []matchedProc
	for _, p := range procs {
		s, known := c.seen[p.PID]
		if !known || (s.name == "" && c.scrape-s.checked >= commRecheck) {
			comm, err := p.Comm()
			if err != nil {
				continue // exited since the directory was read
			}
			name, _ := matchProcess(c.names, comm, p.Executable)
			s = &seenProc{name: name, checked: c.scrape}
			if !known {
				// Spread the rechecks of the PIDs found together at start.
				s.checked -= p.PID % commRecheck
			}
		}
		seen[p.PID] = s
		if s.name != "" {
			found = append(found, matchedProc{p: p, s: s})
		}
	}
	c.seen = seen
	return found
}

// emitProcess reports one process from its stat, reading its command line
// and limits again every commRecheck scrapes. What an unprivileged agent
// may not read (another user's fds) is left out.
func (c *processCollector) emitProcess(ch chan<- prometheus.Metric, m matchedProc, st procfs.ProcStat) {
	s := m.s
	if !s.detailsRead || c.scrape-s.checked >= commRecheck {
		cmdline, _ := m.p.CmdLine()
		s.command = commandOf(cmdline)
		l, err := m.p.Limits()
		s.maxFDs, s.hasMaxFDs = float64(l.OpenFiles), err == nil
		s.detailsRead, s.checked = true, c.scrape
	}
	labels := []string{s.name, strconv.Itoa(m.p.PID), s.command}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.cpu, prometheus.CounterValue, float64(st.UTime+st.STime)/userHZ, labels...)
	gauge(c.rss, float64(st.RSS)*c.pageSize)
	gauge(c.vsize, float64(st.VSize))
	gauge(c.threads, float64(st.NumThreads))
	gauge(c.start, c.bootTime+float64(st.Starttime)/userHZ)
	if n, err := m.p.FileDescriptorsLen(); err == nil {
		gauge(c.fds, float64(n))
	}
	if s.hasMaxFDs {
		gauge(c.maxFDs, s.maxFDs)
	}
}

// matchProcess says which of names a process with this comm is. exe is
// only called for names longer than comm can hold.
func matchProcess(names []string, comm string, exe func() (string, error)) (string, bool) {
	for _, n := range names {
		if len(n) <= commLen {
			if comm == n {
				return n, true
			}
			continue
		}
		if comm != n[:commLen] {
			continue
		}
		if path, err := exe(); err == nil && filepath.Base(path) == n {
			return n, true
		}
	}
	return "", false
}

var commandWord = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// commandOf is the imwatch subcommand a process runs ("agent", "center",
// "im gateway"): the first argument, and the second after "im", when they
// look like command words. Anything else (flags, IDs) stays out of the
// label, which keeps its values few.
func commandOf(cmdline []string) string {
	if len(cmdline) < 2 || !commandWord.MatchString(cmdline[1]) {
		return ""
	}
	if cmdline[1] == "im" && len(cmdline) > 2 && commandWord.MatchString(cmdline[2]) {
		return "im " + cmdline[2]
	}
	return cmdline[1]
}
