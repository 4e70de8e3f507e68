package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/procfs"
)

// families gathers g into a map by family name.
func families(t testing.TB, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value is the value of the series of family name whose labels include
// want; ok is false if there is none.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func seriesCount(mfs map[string]*dto.MetricFamily) int {
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

func TestParseVMStat(t *testing.T) {
	all := regexp.MustCompile(`.*`)
	def := regexp.MustCompile(DefaultVMStatFields)
	type tc struct {
		name    string
		in      string
		include *regexp.Regexp
		want    []vmstatField
		wantErr bool
	}
	for _, c := range []tc{
		{name: "empty", in: "", include: all},
		{name: "fields", in: "nr_free_pages 5\npswpin 7\n", include: all, want: []vmstatField{{"nr_free_pages", 5}, {"pswpin", 7}}},
		{name: "default selection", in: "nr_free_pages 5\npgpgin 1\npswpout 2\npgmajfault 3\noom_kill 4\npgfree 9\n", include: def,
			want: []vmstatField{{"pgpgin", 1}, {"pswpout", 2}, {"pgmajfault", 3}, {"oom_kill", 4}}},
		{name: "no trailing newline", in: "pswpin 7", include: all, want: []vmstatField{{"pswpin", 7}}},
		{name: "negative", in: "nr_foo -3\n", include: all, want: []vmstatField{{"nr_foo", -3}}},
		{name: "no value", in: "pswpin\n", include: all, wantErr: true},
		{name: "bad value", in: "pswpin x\n", include: all, wantErr: true},
		{name: "bad name", in: "psw{pin 1\n", include: all, wantErr: true},
		{name: "bad value not selected", in: "nr_free_pages x\npswpin 1\n", include: def, want: []vmstatField{{"pswpin", 1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseVMStat([]byte(c.in), c.include)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, want error %v", err, c.wantErr)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("got %v, want %v", got, c.want)
				}
			}
		})
	}
}

func FuzzParseVMStat(f *testing.F) {
	f.Add([]byte("nr_free_pages 5\npswpin 7\n"))
	f.Add([]byte("pgfault 18446744073709551615\n"))
	f.Add([]byte("x"))
	if data, err := os.ReadFile(filepath.Join("testdata", "proc", "vmstat")); err == nil {
		f.Add(data)
	}
	all := regexp.MustCompile(`.*`)
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, err := parseVMStat(data, all)
		if err != nil {
			return
		}
		for _, fl := range fields {
			if fl.name == "" || !validFieldName([]byte(fl.name)) {
				t.Fatalf("field name %q would make an invalid metric name", fl.name)
			}
			_ = prometheus.MustNewConstMetric(prometheus.NewDesc("node_vmstat_"+fl.name, "h", nil, nil), prometheus.UntypedValue, fl.value)
		}
	})
}

// inetDiagMsg builds one netlink sock_diag answer for a socket.
func inetDiagMsg(state uint8, rqueue, wqueue uint32) []byte {
	ne := binary.NativeEndian
	b := make([]byte, syscall.SizeofNlMsghdr+inetDiagMsgLen)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	d := b[syscall.SizeofNlMsghdr:]
	d[0] = syscall.AF_INET
	d[inetDiagStateOff] = state
	ne.PutUint32(d[inetDiagRQueueOff:], rqueue)
	ne.PutUint32(d[inetDiagWQueueOff:], wqueue)
	return b
}

func netlinkMsg(typ uint16, payload []byte) []byte {
	b := make([]byte, syscall.SizeofNlMsghdr+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	copy(b[syscall.SizeofNlMsghdr:], payload)
	return b
}

func TestAddInetDiagMsgs(t *testing.T) {
	errno := make([]byte, 4)
	eacces := -int32(syscall.EACCES)
	binary.NativeEndian.PutUint32(errno, uint32(eacces))
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	type tc struct {
		name    string
		in      []byte
		done    bool
		wantErr error
		want    map[string]float64
		tx, rx  float64
	}
	for _, c := range []tc{
		{name: "sockets then done",
			in:   cat(inetDiagMsg(1, 10, 20), inetDiagMsg(1, 0, 5), inetDiagMsg(10, 3, 4096), inetDiagMsg(6, 0, 0), netlinkMsg(syscall.NLMSG_DONE, make([]byte, 4))),
			done: true, want: map[string]float64{"established": 2, "listen": 1, "time_wait": 1}, tx: 25, rx: 13},
		{name: "more to come", in: inetDiagMsg(8, 0, 0), want: map[string]float64{"close_wait": 1}},
		{name: "unknown state ignored", in: inetDiagMsg(12, 1, 1), tx: 1, rx: 1},
		{name: "error", in: netlinkMsg(syscall.NLMSG_ERROR, errno), wantErr: syscall.EACCES},
		{name: "truncated", in: inetDiagMsg(1, 0, 0)[:40], wantErr: errAny},
		{name: "short message", in: netlinkMsg(sockDiagByFamily, make([]byte, 8)), wantErr: errAny},
	} {
		t.Run(c.name, func(t *testing.T) {
			var n tcpCounts
			done, err := addInetDiagMsgs(&n, c.in)
			if c.wantErr != nil {
				if err == nil || (c.wantErr != errAny && !errors.Is(err, c.wantErr)) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil || done != c.done {
				t.Fatalf("done, err = %v, %v; want %v, nil", done, err, c.done)
			}
			for st, name := range tcpStates {
				if name != "" && n.states[st] != c.want[name] {
					t.Errorf("%s = %v, want %v", name, n.states[st], c.want[name])
				}
			}
			if n.txQueued != c.tx || n.rxQueued != c.rx {
				t.Errorf("tx, rx = %v, %v; want %v, %v", n.txQueued, n.rxQueued, c.tx, c.rx)
			}
		})
	}
}

var errAny = errors.New("any error")

func FuzzAddInetDiagMsgs(f *testing.F) {
	f.Add(inetDiagMsg(1, 10, 20))
	f.Add(append(inetDiagMsg(10, 1, 1), netlinkMsg(syscall.NLMSG_DONE, make([]byte, 4))...))
	f.Add(netlinkMsg(syscall.NLMSG_ERROR, []byte{0xf3, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var n tcpCounts
		_, _ = addInetDiagMsgs(&n, data)
	})
}

func TestUnescapeMountField(t *testing.T) {
	for in, want := range map[string]string{
		"/":                 "/",
		`/tmp/imw\040fix`:   "/tmp/imw fix",
		`/a\011b\012c\134d`: "/a\tb\nc\\d",
		`/trailing\04`:      `/trailing\04`,
		`/not\08octal`:      `/not\08octal`,
		`\040`:              " ",
	} {
		if got := unescapeMountField(in); got != want {
			t.Errorf("unescapeMountField(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSelectMounts(t *testing.T) {
	mi := []*procfs.MountInfo{
		{MountPoint: "/", FSType: "ext4", Source: "/dev/vda", Options: map[string]string{"rw": ""}},
		{MountPoint: "/proc", FSType: "proc", Source: "proc"},
		{MountPoint: "/dev/shm", FSType: "tmpfs", Source: "tmpfs"},
		{MountPoint: "/data", FSType: "xfs", Source: "/dev/sdb", Options: map[string]string{"rw": ""}},
		{MountPoint: "/data", FSType: "xfs", Source: "/dev/sdc", Options: map[string]string{"ro": ""}},
		{MountPoint: "/srv", FSType: "overlay", Source: "overlay"},
		{MountPoint: `/srv/with\040space`, FSType: "nfs4", Source: "host:/x"},
	}
	got := selectMounts(mi, regexp.MustCompile(DefaultFSMountPointsExclude), regexp.MustCompile(DefaultFSTypesExclude))
	want := []mount{
		{device: "/dev/vda", fsType: "ext4", mountPoint: "/"},
		{device: "/dev/sdc", fsType: "xfs", mountPoint: "/data", readOnly: true},
		{device: "host:/x", fsType: "nfs4", mountPoint: "/srv/with space"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestMatchProcess(t *testing.T) {
	exe := func(path string) func() (string, error) {
		return func() (string, error) { return path, nil }
	}
	noExe := func() (string, error) { t.Error("exe read for a short name"); return "", errors.New("no") }
	type tc struct {
		name  string
		names []string
		comm  string
		exe   func() (string, error)
		want  string
		ok    bool
	}
	for _, c := range []tc{
		{name: "comm", names: []string{"imwatch"}, comm: "imwatch", exe: noExe, want: "imwatch", ok: true},
		{name: "other", names: []string{"imwatch"}, comm: "bash", exe: noExe},
		{name: "prefix is not a match", names: []string{"imwatch"}, comm: "imwatch2", exe: noExe},
		{name: "second name", names: []string{"imwatch", "nats-server"}, comm: "nats-server", exe: noExe, want: "nats-server", ok: true},
		{name: "long name by exe", names: []string{"imwatch-gateway-eu"}, comm: "imwatch-gateway", exe: exe("/usr/bin/imwatch-gateway-eu"), want: "imwatch-gateway-eu", ok: true},
		{name: "long name other exe", names: []string{"imwatch-gateway-eu"}, comm: "imwatch-gateway", exe: exe("/usr/bin/imwatch-gateway-us")},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := matchProcess(c.names, c.comm, c.exe)
			if got != c.want || ok != c.ok {
				t.Fatalf("matchProcess = %q, %v; want %q, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func TestCommandOf(t *testing.T) {
	for _, c := range []struct {
		cmdline []string
		want    string
	}{
		{nil, ""},
		{[]string{"imwatch"}, ""},
		{[]string{"imwatch", "agent", "--listen", ":9101"}, "agent"},
		{[]string{"imwatch", "im", "gateway", "--id", "gw1"}, "im gateway"},
		{[]string{"imwatch", "im", "--help"}, "im"},
		{[]string{"imwatch", "--listen", "x"}, ""},
		{[]string{"imwatch", "trace", "01HXYZ"}, "trace"},
		{[]string{"imwatch", strings.Repeat("a", 40)}, ""},
	} {
		if got := commandOf(c.cmdline); got != c.want {
			t.Errorf("commandOf(%q) = %q, want %q", c.cmdline, got, c.want)
		}
	}
}

// TestProcessBound: with room for one process, the lowest PID is reported
// and the matched count still says two.
func TestProcessBound(t *testing.T) {
	cfg := fixtureConfig()
	cfg.MaxProcesses = 1
	mfs := families(t, newFixtureAgent(t, cfg).Gatherer())
	if n := len(mfs["imwatch_process_threads"].GetMetric()); n != 1 {
		t.Fatalf("%d processes reported, want 1", n)
	}
	if _, ok := value(mfs, "imwatch_process_threads", map[string]string{"pid": "4242"}); !ok {
		t.Error("PID 4242 not reported")
	}
	if v, _ := value(mfs, "imwatch_process_matched", map[string]string{"name": "imwatch"}); v != 2 {
		t.Errorf("imwatch_process_matched = %v, want 2", v)
	}
}

// TestSeriesLimit: collectors that do not fit are dropped whole, from the
// end of the list, and counted.
func TestSeriesLimit(t *testing.T) {
	full := seriesCount(families(t, newFixtureAgent(t, fixtureConfig()).Gatherer()))
	cfg := fixtureConfig()
	cfg.MaxSeries = full - 1
	a := newFixtureAgent(t, cfg)
	for scrape := 1; scrape <= 2; scrape++ {
		mfs := families(t, a.Gatherer())
		if n := seriesCount(mfs); n > cfg.MaxSeries {
			t.Fatalf("scrape has %d series, limit %d", n, cfg.MaxSeries)
		}
		if v, _ := value(mfs, "node_scrape_collector_success", map[string]string{"collector": "process"}); v != 0 {
			t.Errorf("process collector success = %v, want 0 (dropped)", v)
		}
		if _, ok := mfs["imwatch_process_threads"]; ok {
			t.Error("process collector's series present, want it dropped whole")
		}
		if v, _ := value(mfs, "node_scrape_collector_success", map[string]string{"collector": "cpu"}); v != 1 {
			t.Errorf("cpu collector success = %v, want 1", v)
		}
		if v, _ := value(mfs, "imwatch_agent_series", nil); v != float64(full) {
			t.Errorf("imwatch_agent_series = %v, want %d", v, full)
		}
		dropped, _ := value(mfs, "imwatch_agent_series_dropped_total", nil)
		if dropped == 0 || int(dropped)%scrape != 0 {
			t.Errorf("scrape %d: imwatch_agent_series_dropped_total = %v", scrape, dropped)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	type tc struct {
		name string
		edit func(c *Config)
		want string // in the error; "" for none
	}
	for _, c := range []tc{
		{name: "defaults", edit: func(*Config) {}},
		{name: "bad regexp", edit: func(c *Config) { c.VMStatFields = "(" }, want: "--collector.vmstat.fields"},
		{name: "unknown collector", edit: func(c *Config) { c.Enabled["cpuu"] = true }, want: `unknown collector "cpuu"`},
		{name: "tiny max series", edit: func(c *Config) { c.MaxSeries = 3 }, want: "--max-series 3"},
		{name: "no process names", edit: func(c *Config) { c.ProcessNames = nil }, want: "--collector.process.names"},
		{name: "no process names but collector off", edit: func(c *Config) { c.ProcessNames = nil; c.Enabled["process"] = false }},
		{name: "zero statfs timeout", edit: func(c *Config) { c.StatfsTimeout = 0 }, want: "statfs-timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.edit(&cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate = %v, want an error naming %q", err, c.want)
			}
		})
	}
}

func TestCollectorSwitches(t *testing.T) {
	cfg := fixtureConfig()
	cfg.DisableDefaults = true
	cfg.Enabled["loadavg"] = true
	cfg.Enabled["cpu"] = false
	a := newFixtureAgent(t, cfg)
	if got := strings.Join(a.CollectorNames(), ","); got != "loadavg" {
		t.Fatalf("collectors = %s, want loadavg", got)
	}
	mfs := families(t, a.Gatherer())
	if _, ok := mfs["node_load1"]; !ok {
		t.Error("node_load1 missing")
	}
	if _, ok := mfs["node_cpu_seconds_total"]; ok {
		t.Error("node_cpu_seconds_total present with cpu off")
	}
}

// TestPressureNoData: a kernel without /proc/pressure fails only that
// collector, softly.
func TestPressureNoData(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", "proc"))); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "pressure")); err != nil {
		t.Fatal(err)
	}
	cfg := fixtureConfig()
	cfg.ProcPath = dir
	mfs := families(t, newFixtureAgent(t, cfg).Gatherer())
	if v, _ := value(mfs, "node_scrape_collector_success", map[string]string{"collector": "pressure"}); v != 0 {
		t.Errorf("pressure success = %v, want 0", v)
	}
	if v, _ := value(mfs, "node_scrape_collector_success", map[string]string{"collector": "cpu"}); v != 1 {
		t.Errorf("cpu success = %v, want 1", v)
	}
	if _, ok := mfs["node_pressure_cpu_waiting_seconds_total"]; ok {
		t.Error("pressure series present")
	}
}

// TestFailingCollector: a collector that errs or panics is reported failed;
// the others are served.
func TestFailingCollector(t *testing.T) {
	a := newFixtureAgent(t, fixtureConfig())
	a.collectors = append(a.collectors,
		namedCollector{"broken", collectorFunc(func(chan<- prometheus.Metric) error { return errors.New("boom") })},
		namedCollector{"panicky", collectorFunc(func(chan<- prometheus.Metric) error { panic("boom") })},
	)
	a.reserved = reservedSeries(len(a.collectors))
	mfs := families(t, a.Gatherer())
	for _, name := range []string{"broken", "panicky"} {
		if v, ok := value(mfs, "node_scrape_collector_success", map[string]string{"collector": name}); !ok || v != 0 {
			t.Errorf("%s success = %v (present %v), want 0", name, v, ok)
		}
	}
	if _, ok := mfs["node_load1"]; !ok {
		t.Error("node_load1 missing")
	}
}

type collectorFunc func(ch chan<- prometheus.Metric) error

func (f collectorFunc) Update(ch chan<- prometheus.Metric) error { return f(ch) }

// TestStatfsHang: a mount whose statfs hangs costs one timeout, then is
// reported failed at once until its call returns; other mounts are served.
func TestStatfsHang(t *testing.T) {
	cfg := fixtureConfig()
	cfg.StatfsTimeout = 50 * time.Millisecond
	a := newFixtureAgent(t, cfg)
	release := make(chan struct{})
	calls := make(chan string, 100)
	for _, nc := range a.collectors {
		if fc, ok := nc.c.(*filesystemCollector); ok {
			fc.statfs = func(path string) (fsStats, error) {
				calls <- path
				if path == "/tmp/imw fix" {
					<-release
				}
				return fakeStatfs(path)
			}
		}
	}
	hung := map[string]string{"mountpoint": "/tmp/imw fix"}
	root := map[string]string{"mountpoint": "/"}
	countCalls := func(path string) int {
		n := 0
		for {
			select {
			case p := <-calls:
				if p == path {
					n++
				}
			default:
				return n
			}
		}
	}
	for scrape := 1; scrape <= 3; scrape++ {
		start := time.Now()
		mfs := families(t, a.Gatherer())
		took := time.Since(start)
		if v, _ := value(mfs, "node_filesystem_device_error", hung); v != 1 {
			t.Errorf("scrape %d: device_error of the hung mount = %v, want 1", scrape, v)
		}
		if _, ok := value(mfs, "node_filesystem_size_bytes", hung); ok {
			t.Errorf("scrape %d: size of the hung mount reported", scrape)
		}
		if v, _ := value(mfs, "node_filesystem_size_bytes", root); v == 0 {
			t.Errorf("scrape %d: / not reported", scrape)
		}
		if took > 5*time.Second {
			t.Errorf("scrape %d took %s", scrape, took)
		}
		if n := countCalls("/tmp/imw fix"); scrape == 1 && n != 1 || scrape > 1 && n != 0 {
			t.Errorf("scrape %d: %d statfs calls on the hung mount", scrape, n)
		}
	}
	close(release)
	// Once the hung call returns, the mount is asked again and served.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mfs := families(t, a.Gatherer())
		if v, ok := value(mfs, "node_filesystem_device_error", hung); ok && v == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hung mount still reported failed after its statfs returned")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProcessDiscovery: a new imwatch process is found at the next
// scrape; one that exec()s into imwatch under an old PID within
// commRecheck scrapes; one that exits is gone at the next scrape.
func TestProcessDiscovery(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", "proc"))); err != nil {
		t.Fatal(err)
	}
	cfg := fixtureConfig()
	cfg.ProcPath = dir
	cfg.DisableDefaults = true
	cfg.Enabled["process"] = true
	a := newFixtureAgent(t, cfg)
	reported := func() map[string]bool {
		out := map[string]bool{}
		mf := families(t, a.Gatherer())["imwatch_process_threads"]
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pid" {
					out[l.GetValue()] = true
				}
			}
		}
		return out
	}
	if got := reported(); !got["4242"] || !got["4243"] || got["1"] {
		t.Fatalf("reported %v, want 4242 and 4243", got)
	}
	// A new process.
	if err := os.CopyFS(filepath.Join(dir, "4244"), os.DirFS(filepath.Join(dir, "4243"))); err != nil {
		t.Fatal(err)
	}
	if got := reported(); !got["4244"] {
		t.Fatalf("new PID 4244 not reported at the next scrape: %v", got)
	}
	// An exit.
	if err := os.RemoveAll(filepath.Join(dir, "4243")); err != nil {
		t.Fatal(err)
	}
	if got := reported(); got["4243"] {
		t.Fatalf("PID 4243 still reported after it exited: %v", got)
	}
	// PID 1 exec()s imwatch: comm changes, in its own file and in stat.
	if err := os.WriteFile(filepath.Join(dir, "1", "comm"), []byte("imwatch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(filepath.Join(dir, "1", "stat"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "1", "stat"), bytes.Replace(stat, []byte("(sleep)"), []byte("(imwatch)"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 1; ; i++ {
		if reported()["1"] {
			t.Logf("found after %d scrapes", i)
			break
		}
		if i == commRecheck {
			t.Fatalf("PID 1 not found %d scrapes after it became imwatch", i)
		}
	}
}
