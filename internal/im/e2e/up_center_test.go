package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// TestUpCenterWatchesEveryPart: the center that `imwatch up` runs scrapes
// both gateways, the logic node and the agent, and has loaded the default
// rules.
func TestUpCenterWatchesEveryPart(t *testing.T) {
	up := startUp(t, t.TempDir())
	m := regexp.MustCompile(`center: +(http://\S+)`).FindStringSubmatch(up.stdout())
	if m == nil {
		t.Fatalf("no center address in the output of imwatch up:\n%s", up.stdout())
	}
	center := m[1]
	get := func(path string, v any) error {
		resp, err := http.Get(center + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
	imtest.Eventually(t, 30*time.Second, func() error {
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := get("/api/v1/query?query="+url.QueryEscape("up == 1"), &r); err != nil {
			return err
		}
		jobs := map[string]int{}
		for _, s := range r.Data.Result {
			jobs[s.Metric["job"]]++
		}
		if jobs["imwatch-gateway"] != 2 || jobs["imwatch-logic"] != 1 || jobs["imwatch-agent"] != 1 {
			return fmt.Errorf("targets up by job: %v", jobs)
		}
		return nil
	})
	var rules struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := get("/api/v1/rules", &rules); err != nil {
		t.Fatal(err)
	}
	if len(rules.Data.Groups) < 4 {
		t.Fatalf("%d rule groups loaded, want the 4 default files' groups", len(rules.Data.Groups))
	}
}
