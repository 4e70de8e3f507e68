package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const example = `
storage: {path: ./imwatch-data/tsdb, retention: 15d, retention_size: 10GB}
scrape: {interval: 5s, timeout: 4s, targets: [{url: "http://127.0.0.1:9101/metrics", labels: {job: agent}}]}
rule_files: ["rules/*.yml"]
alerting: {alertmanagers: ["http://127.0.0.1:9093"], webhooks: ["http://127.0.0.1:9099/hook"]}
remote_write: [{url: "http://other:9090/api/v1/write", bearer_token_file: token}]
auth: {bearer_token_file: center-token}
`

func TestParseExample(t *testing.T) {
	cfg, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Retention.D() != 15*24*time.Hour {
		t.Errorf("retention = %s", cfg.Storage.Retention)
	}
	if cfg.Storage.RetentionSize != 10<<30 {
		t.Errorf("retention_size = %d", cfg.Storage.RetentionSize)
	}
	if cfg.Storage.WALCompression != "snappy" {
		t.Errorf("wal_compression default lost: %q", cfg.Storage.WALCompression)
	}
	if len(cfg.Scrape.Targets) != 1 || cfg.Scrape.Targets[0].Labels["job"] != "agent" {
		t.Errorf("targets = %+v", cfg.Scrape.Targets)
	}
	if cfg.Scrape.SampleLimit != Default().Scrape.SampleLimit {
		t.Errorf("sample_limit default lost: %d", cfg.Scrape.SampleLimit)
	}
	rw := cfg.RemoteWrite[0]
	if rw.QueueCapacity != DefaultRemoteWrite.QueueCapacity || rw.MaxSamplesPerSend != DefaultRemoteWrite.MaxSamplesPerSend {
		t.Errorf("remote_write defaults not applied: %+v", rw)
	}
	if cfg.Query.LookbackDelta.D() != 5*time.Minute {
		t.Errorf("lookback = %s", cfg.Query.LookbackDelta)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, in := range []string{"", "\n", "# nothing\n", "---\n"} {
		cfg, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if cfg.Storage.Path != Default().Storage.Path || cfg.Scrape.Interval != Default().Scrape.Interval {
			t.Errorf("%q: not the defaults: %+v", in, cfg)
		}
	}
}

func TestParseErrors(t *testing.T) {
	type tc struct {
		name string
		in   string
		want []string // all must appear in the error
	}
	for _, c := range []tc{
		{"unknown key names line and suggests", "scrape:\n  interval: 5s\n  scrape_intervall: 3s\n",
			[]string{"config line 3", `unknown key "scrape_intervall" in scrape`, `did you mean "interval"`}},
		{"unknown top-level key", "storage: {}\nbogus: 1\n", []string{"config line 2", `unknown key "bogus" at the top level`}},
		{"unknown key in target", "scrape:\n  targets:\n    - url: http://a:1/metrics\n      labelz: {}\n",
			[]string{"config line 4", `unknown key "labelz" in scrape.targets[0]`}},
		{"bad duration", "storage:\n  retention: 15x\n", []string{"config line 2", "storage.retention", `"15x" is not a duration`}},
		{"bad size", "storage:\n  retention_size: lots\n", []string{"config line 2", "storage.retention_size", "not a size"}},
		{"wrong type", "scrape:\n  sample_limit: many\n", []string{"config line 2", "scrape.sample_limit", "whole number"}},
		{"list expected", "rule_files: rules.yml\n", []string{"config line 1", "rule_files", "want a list"}},
		{"timeout above interval", "scrape:\n  interval: 5s\n  timeout: 10s\n", []string{"config line 3", "scrape.timeout", "longer than scrape.interval"}},
		{"bad target url", "scrape:\n  targets:\n    - url: ftp://x/metrics\n", []string{"config line 3", "scrape.targets[0].url", "http://"}},
		{"duplicate target", "scrape:\n  targets:\n    - url: http://a:1/m\n    - url: http://a:1/m\n", []string{"scrape.targets[1].url", "listed twice"}},
		{"reserved label", "scrape:\n  targets:\n    - url: http://a:1/m\n      labels: {__name__: x}\n", []string{"reserved"}},
		{"bad alertmanager", "alerting:\n  alertmanagers: [\"localhost:9093\"]\n", []string{"config line 2", "alerting.alertmanagers[0]"}},
		{"bad compression", "storage: {wal_compression: lz4}\n", []string{"storage.wal_compression", "lz4"}},
		{"remote write batch above capacity", "remote_write:\n  - url: http://a:9/w\n    queue_capacity: 10\n    max_samples_per_send: 100\n",
			[]string{"config line 4", "remote_write[0].max_samples_per_send"}},
		{"unknown key in traces", "traces:\n  retension: 3d\n", []string{"config line 2", `unknown key "retension" in traces`, `did you mean "retention"`}},
		{"bad grpc listen", "traces:\n  grpc_listen: 4317\n", []string{"config line 2", "traces.grpc_listen", "host:port"}},
		{"trace queue below a request", "traces:\n  queue_spans: 10\n", []string{"config line 2", "traces.queue_spans", "max_spans_per_request"}},
		{"zero gap threshold", "traces: {gap_threshold: 0}\n", []string{"traces.gap_threshold", "must be positive"}},
		{"syntax error", "storage: {path: [\n", []string{"config"}},
		{"duplicate key", "storage: {}\nstorage: {}\n", []string{"already defined"}},
		{"two documents", "storage: {}\n---\nscrape: {}\n", []string{"second YAML document"}},
		{"alias", "a: &x {}\nstorage: *x\n", []string{"unknown key"}},
		{"all errors reported", "storage: {retention: -}\nscrape: {interval: x}\n", []string{"storage.retention", "scrape.interval"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.in))
			if err == nil {
				t.Fatalf("no error for:\n%s", c.in)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadResolvesAndChecksFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", "s3cret\n")
	write("center-token", "c3nter\n")
	write("rules/a.yml", "groups:\n- name: g\n  rules:\n  - record: x:y\n    expr: up\n")
	write("center.yml", example)
	cfg, err := Load(filepath.Join(dir, "center.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.BearerToken != "c3nter" || cfg.RemoteWrite[0].BearerToken != "s3cret" {
		t.Errorf("tokens: %q %q", cfg.Auth.BearerToken, cfg.RemoteWrite[0].BearerToken)
	}
	if cfg.Storage.Path != filepath.Join(dir, "imwatch-data/tsdb") {
		t.Errorf("storage path not resolved: %s", cfg.Storage.Path)
	}
	files, err := cfg.RuleFilePaths()
	if err != nil || len(files) != 1 || files[0] != filepath.Join(dir, "rules/a.yml") {
		t.Errorf("rule files %v, %v", files, err)
	}

	// A broken rule file, a missing token: refused, saying which.
	write("rules/b.yml", "groups:\n- name: g\n  rules:\n  - record: x:y\n    expr: up{\n")
	os.Remove(filepath.Join(dir, "token"))
	_, err = Load(filepath.Join(dir, "center.yml"))
	if err == nil {
		t.Fatal("broken rule file and missing token accepted")
	}
	for _, w := range []string{"b.yml", "remote_write[0].bearer_token_file"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.yml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestDurationAndSizeRoundTrip(t *testing.T) {
	cfg, err := Parse([]byte("storage: {retention: 1w2d, retention_size: 512MiB}\nscrape: {body_size_limit: 1048576}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Retention.D() != 9*24*time.Hour {
		t.Errorf("retention %v %s", cfg.Storage.Retention.D(), cfg.Storage.Retention)
	}
	if cfg.Storage.RetentionSize != 512<<20 || cfg.Scrape.BodySizeLimit != 1<<20 {
		t.Errorf("sizes %d %d", cfg.Storage.RetentionSize, cfg.Scrape.BodySizeLimit)
	}
}

// TestDocumentedTracesDefaults: the traces section written out in
// docs/center.md is the defaults.
func TestDocumentedTracesDefaults(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/center.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i := strings.Index(s, "\ntraces:")
	if i < 0 {
		t.Fatal("no traces section in docs/center.md")
	}
	block := s[i+1:]
	block = block[:strings.Index(block, "```")]
	cfg, err := Parse([]byte(block))
	if err != nil {
		t.Fatalf("the documented traces section does not parse: %v\n%s", err, block)
	}
	if !reflect.DeepEqual(cfg.Traces, Default().Traces) {
		t.Errorf("documented %+v\ndefaults   %+v", cfg.Traces, Default().Traces)
	}
}
