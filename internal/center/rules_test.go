package center_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

var defaultRules, _ = filepath.Abs("../../rules")

// TestDefaultRulesPromtool: the rules shipped in rules/ are clean for
// `promtool check rules` and pass their unit tests in rules/tests.
func TestDefaultRulesPromtool(t *testing.T) {
	promtool := imtest.RequireBinary(t, "promtool", "prometheus")
	files, _ := filepath.Glob(filepath.Join(defaultRules, "*.yml"))
	if len(files) < 4 {
		t.Fatalf("rule files: %v", files)
	}
	out, err := exec.Command(promtool, append([]string{"check", "rules"}, files...)...).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	tests, _ := filepath.Glob(filepath.Join(defaultRules, "tests", "*.test.yml"))
	out, err = exec.Command(promtool, append([]string{"test", "rules"}, tests...)...).CombinedOutput()
	if err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// TestDefaultRulesLoadAndEvaluate: the center loads the default rules and
// evaluates every one of them without error.
func TestDefaultRulesLoadAndEvaluate(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.RuleFiles = []string{filepath.Join(defaultRules, "*.yml")}
	c := centertest.Start(t, cfg)
	// The 3-day SLO group is evaluated once a minute: its first evaluation
	// may be a minute away.
	imtest.Eventually(t, 90*time.Second, func() error {
		_, r := centertest.API(t, c.URL(), "/api/v1/rules", nil)
		var d struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(r.Data, &d); err != nil {
			return err
		}
		n := 0
		for _, g := range d.Groups {
			for _, rule := range g.Rules {
				if rule.Health == "err" {
					t.Fatalf("rule %s/%s: %s", g.Name, rule.Name, rule.LastError)
				}
				if rule.Health != "ok" {
					return fmt.Errorf("rule %s/%s not evaluated yet (%s)", g.Name, rule.Name, rule.Health)
				}
				n++
			}
		}
		if n < 30 {
			return fmt.Errorf("only %d rules", n)
		}
		return nil
	})
}
