package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// TestUpReadyWithLiveData: `imwatch up` prints its guide with the UI's
// address, its center is ready, and the overview's data (probe results of
// both locations, messages of the simulated users one-to-one and in
// groups) comes in by itself. How fast is a benchmark's business
// (bench/mttd, docs/benchmarks.md); here generous timeouts, polled.
func TestUpReadyWithLiveData(t *testing.T) {
	up := startProc(t, "up", upArgs(t, t.TempDir(), "--users", "6", "--rate", "10")...)
	up.waitLine("Stop with Ctrl-C.", 30*time.Second)
	out := up.stdout()
	m := regexp.MustCompile(`Open (http://\S+)/ in a browser`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "imwatch fault add drop") || !strings.Contains(out, "6 simulated users") {
		t.Fatalf("no guide with the UI address, a fault to try and the users in:\n%s", out)
	}
	base := m[1]
	resp, err := http.Get(base + "/-/ready")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("center not ready once imwatch up printed its guide: %v %v", err, resp)
	}
	resp.Body.Close()
	for _, q := range []string{
		`count(probe_success) == 2`,
		`sum(rate(imwatch_im_messages_total{kind="direct",stage="delivered"}[1m])) > 0`,
		`sum(rate(imwatch_im_messages_total{kind="group",stage="delivered"}[1m])) > 0`,
		`count(up{instance=~"gw-1|gw-2|logic-1"} == 1) == 3`,
	} {
		imtest.Eventually(t, 60*time.Second, func() error {
			s, err := centertest.Query(base, q, time.Now())
			if err != nil {
				return err
			}
			if len(s) == 0 {
				return fmt.Errorf("%s: no result yet", q)
			}
			return nil
		})
	}
}
