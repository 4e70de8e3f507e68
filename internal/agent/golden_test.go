package agent

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// fixtureConfig points the agent at the fixture tree under testdata, which
// was captured from a real host (see testdata/capture.sh).
func fixtureConfig() Config {
	cfg := DefaultConfig()
	cfg.ProcPath = filepath.Join("testdata", "proc")
	cfg.SysPath = filepath.Join("testdata", "sys")
	cfg.RootPath = "/"
	cfg.PageSize = 4096
	cfg.Log = testLogger()
	return cfg
}

// fakeStatfs answers statfs for the fixture's mount points, which do not
// exist on the machine running the test.
func fakeStatfs(path string) (fsStats, error) {
	switch path {
	case "/":
		return fsStats{size: 270553174016, free: 257716752384, avail: 84956872704, files: 16777216, filesFree: 16366880}, nil
	case "/tmp/imw fix":
		return fsStats{size: 2097152, free: 2097152, avail: 2097152, files: 3014, filesFree: 3013}, nil
	}
	return fsStats{}, syscall.ENOENT
}

// newFixtureAgent builds an agent over the fixture tree with statfs faked.
func newFixtureAgent(t testing.TB, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, nc := range a.collectors {
		if fc, ok := nc.c.(*filesystemCollector); ok {
			fc.statfs = fakeStatfs
		}
	}
	return a
}

var durationLine = regexp.MustCompile(`(?m)^(node_scrape_collector_duration_seconds\{[^}]*\}) .*$`)

// exposition renders what g serves, in the text format, with collector
// durations zeroed since they differ on every run.
func exposition(t testing.TB, g prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatalf("encode: %v", err)
		}
	}
	return durationLine.ReplaceAll(buf.Bytes(), []byte("$1 0"))
}

// TestGolden runs every collector on the fixture tree and compares the
// whole exposition, HELP and TYPE lines included, with
// testdata/fixture.metrics.
func TestGolden(t *testing.T) {
	got := exposition(t, newFixtureAgent(t, fixtureConfig()).Gatherer())
	golden := filepath.Join("testdata", "fixture.metrics")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s missing: run go test ./internal/agent -run TestGolden -update", golden)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("exposition differs from %s (run with -update if the change is intended):\n%s", golden, lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range bytes.Split([]byte(s), []byte("\n")) {
			m[string(l)]++
		}
		return m
	}
	w, g := count(want), count(got)
	var out bytes.Buffer
	for _, l := range bytes.Split([]byte(want), []byte("\n")) {
		if g[string(l)] == 0 {
			out.WriteString("- " + string(l) + "\n")
		}
	}
	for _, l := range bytes.Split([]byte(got), []byte("\n")) {
		if w[string(l)] == 0 {
			out.WriteString("+ " + string(l) + "\n")
		}
	}
	return out.String()
}
