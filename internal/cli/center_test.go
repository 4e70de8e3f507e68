package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCenterConfigCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("rules/a.yml", "groups:\n- name: g\n  rules:\n  - record: x:y\n    expr: up\n")
	good := write("good.yml", "scrape:\n  targets: [{url: 'http://127.0.0.1:9101/metrics', labels: {job: agent}}]\nrule_files: [rules/*.yml]\n")
	bad := write("bad.yml", "storage:\n  path: data\n  retention: 15d\n  retension_size: 10GB\n")
	badRules := write("badrules.yml", "rule_files: [broken/*.yml]\n")
	write("broken/b.yml", "groups:\n- name: g\n  rules:\n  - alert: X\n    expr: sum(\n")

	type tc struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderrIn []string
	}
	for _, c := range []tc{
		{"good", []string{"center", "--config", good, "--config.check"}, 0, "OK (1 scrape targets, 1 rule files", nil},
		{"unknown key", []string{"center", "--config", bad, "--config.check"}, 1, "", []string{"config line 4", `unknown key "retension_size" in storage`, `did you mean "retention_size"`}},
		{"bad rule file", []string{"center", "--config", badRules, "--config.check"}, 1, "", []string{"b.yml", "unclosed left parenthesis"}},
		{"bad config refused at start", []string{"center", "--config", bad, "--listen", "127.0.0.1:0"}, 1, "", []string{"config line 4"}},
		{"missing file", []string{"center", "--config", filepath.Join(dir, "nope.yml"), "--config.check"}, 1, "", []string{"no such file"}},
		{"unknown flag", []string{"center", "--bogus"}, 2, "", []string{"bogus"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(c.args, &stdout, &stderr)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, c.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), c.stdout) {
				t.Errorf("stdout %q lacks %q", stdout.String(), c.stdout)
			}
			for _, w := range c.stderrIn {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q lacks %q", stderr.String(), w)
				}
			}
		})
	}
}
