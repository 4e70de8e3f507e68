package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// filesystemCollector reports size, free space and inodes of the mounted
// filesystems, from the mount table of PID 1 (the host's, when the agent
// runs in a container with the host's /proc) and statfs(2) on each mount
// point under the root path.
//
// A statfs on a hung network mount can block for minutes. Each call runs in
// its own goroutine with a timeout; a mount whose call timed out is
// reported with node_filesystem_device_error 1 and not asked again until
// that call returns, so a hung mount costs one goroutine, not one per
// scrape, and never holds up a scrape for longer than the timeout.
type filesystemCollector struct {
	proc      procfs.FS
	root      string
	mpExclude *regexp.Regexp
	fsExclude *regexp.Regexp
	timeout   time.Duration
	statfs    func(path string) (fsStats, error)
	log       *slog.Logger

	mu       sync.Mutex
	inflight map[string]*statCall

	size, free, avail, files, filesFree, readonly, deviceError *prometheus.Desc
}

// fsStats is what statfs says about one filesystem, in bytes and inodes.
type fsStats struct {
	size, free, avail, files, filesFree float64
}

// statCall is one statfs in progress, shared by concurrent scrapes.
type statCall struct {
	done  chan struct{}
	st    fsStats
	err   error
	stuck bool // a scrape gave up waiting; guarded by filesystemCollector.mu
}

// errStatfsHung says a mount did not answer statfs within the timeout.
var errStatfsHung = errors.New("statfs did not return in time")

func newFilesystemCollector(e *env) (Collector, error) {
	mp, err := regexp.Compile(e.cfg.FSMountPointsExclude)
	if err != nil {
		return nil, fmt.Errorf("--collector.filesystem.mount-points-exclude: %w", err)
	}
	ft, err := regexp.Compile(e.cfg.FSTypesExclude)
	if err != nil {
		return nil, fmt.Errorf("--collector.filesystem.fs-types-exclude: %w", err)
	}
	labels := []string{"device", "fstype", "mountpoint"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("node_filesystem_"+name, help, labels, nil)
	}
	return &filesystemCollector{
		proc:        e.proc,
		root:        e.cfg.RootPath,
		mpExclude:   mp,
		fsExclude:   ft,
		timeout:     e.cfg.StatfsTimeout,
		statfs:      statfs,
		log:         e.log.With("collector", "filesystem"),
		inflight:    map[string]*statCall{},
		size:        d("size_bytes", "Filesystem size in bytes."),
		free:        d("free_bytes", "Free bytes, those reserved for root included."),
		avail:       d("avail_bytes", "Bytes available to unprivileged users."),
		files:       d("files", "Inodes (file nodes) in total."),
		filesFree:   d("files_free", "Free inodes."),
		readonly:    d("readonly", "1 if the filesystem is mounted read-only."),
		deviceError: d("device_error", "1 if statfs on the mount point failed or did not return in time."),
	}, nil
}

func statfs(path string) (fsStats, error) {
	var b syscall.Statfs_t
	if err := syscall.Statfs(path, &b); err != nil {
		return fsStats{}, err
	}
	bs := float64(b.Bsize)
	return fsStats{
		size:      float64(b.Blocks) * bs,
		free:      float64(b.Bfree) * bs,
		avail:     float64(b.Bavail) * bs,
		files:     float64(b.Files),
		filesFree: float64(b.Ffree),
	}, nil
}

// mount is one filesystem to report.
type mount struct {
	device, fsType, mountPoint string
	readOnly                   bool
}

func (c *filesystemCollector) Update(ch chan<- prometheus.Metric) error {
	mi, err := c.proc.GetProcMounts(1)
	if err != nil {
		// PID 1's mount table may be unreadable without privileges; ours
		// is the same unless we run in our own mount namespace.
		var err2 error
		if mi, err2 = c.proc.GetMounts(); err2 != nil {
			return fmt.Errorf("filesystem: mounts of PID 1: %w; own mounts: %w", err, err2)
		}
	}
	for _, m := range selectMounts(mi, c.mpExclude, c.fsExclude) {
		st, err := c.stat(filepath.Join(c.root, m.mountPoint))
		labels := []string{m.device, m.fsType, m.mountPoint}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		gauge(c.readonly, boolFloat(m.readOnly))
		gauge(c.deviceError, boolFloat(err != nil))
		if err != nil {
			c.log.Debug("statfs failed", "mountpoint", m.mountPoint, "err", err)
			continue
		}
		gauge(c.size, st.size)
		gauge(c.free, st.free)
		gauge(c.avail, st.avail)
		gauge(c.files, st.files)
		gauge(c.filesFree, st.filesFree)
	}
	return nil
}

// stat runs statfs on path with the timeout, joining a call a concurrent
// scrape already started, and skipping a path whose call is known to hang.
func (c *filesystemCollector) stat(path string) (fsStats, error) {
	c.mu.Lock()
	call, ok := c.inflight[path]
	if ok && call.stuck {
		c.mu.Unlock()
		return fsStats{}, errStatfsHung
	}
	if !ok {
		call = &statCall{done: make(chan struct{})}
		c.inflight[path] = call
		go func() {
			st, err := c.statfs(path)
			c.mu.Lock()
			call.st, call.err = st, err
			delete(c.inflight, path)
			c.mu.Unlock()
			close(call.done)
		}()
	}
	c.mu.Unlock()

	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	select {
	case <-call.done:
		return call.st, call.err
	case <-timer.C:
		c.mu.Lock()
		call.stuck = true
		c.mu.Unlock()
		c.log.Warn("statfs did not return in time: reporting the mount as failed until it does",
			"path", path, "timeout", c.timeout)
		return fsStats{}, errStatfsHung
	}
}

// selectMounts keeps the mounts not excluded by mount point or type, one
// per mount point: of several mounts stacked on one point only the last,
// the one statfs sees, is kept.
func selectMounts(mi []*procfs.MountInfo, mpExclude, fsExclude *regexp.Regexp) []mount {
	var out []mount
	at := map[string]int{}
	for _, m := range mi {
		mp := unescapeMountField(m.MountPoint)
		if mpExclude.MatchString(mp) || fsExclude.MatchString(m.FSType) {
			continue
		}
		_, ro := m.Options["ro"]
		mt := mount{device: unescapeMountField(m.Source), fsType: m.FSType, mountPoint: mp, readOnly: ro}
		if i, ok := at[mp]; ok {
			out[i] = mt
			continue
		}
		at[mp] = len(out)
		out = append(out, mt)
	}
	return out
}

// unescapeMountField undoes the kernel's octal escapes in mount table
// fields (space is \040, tab \011, newline \012, backslash \134).
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
