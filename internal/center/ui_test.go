package center_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/center/ui/uitest"
)

// TestUIWithBearerToken: with auth on, the UI's own files need no token,
// the API still does, and the page asks for the token, then works with it.
func TestUIWithBearerToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := centertest.Config(t)
	cfg.Auth.BearerTokenFile = tokenFile
	if err := cfg.Resolve(dir); err != nil {
		t.Fatal(err)
	}
	c := centertest.Start(t, cfg)

	for _, tc := range []struct {
		path, ctype string
		code        int
	}{
		{"/", "text/html; charset=utf-8", 200},
		{"/ui/js/app.js", "text/javascript; charset=utf-8", 200},
		{"/ui/features.json", "application/json", 200},
		{"/api/v1/labels", "application/json", 401},
	} {
		resp, err := http.Get(c.URL() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) {
			t.Errorf("GET %s: %s %s, want %d %s", tc.path, resp.Status, resp.Header.Get("Content-Type"), tc.code, tc.ctype)
		}
		if tc.path == "/ui/features.json" {
			var f struct {
				Auth bool `json:"auth"`
			}
			if err := json.Unmarshal(body, &f); err != nil || !f.Auth {
				t.Errorf("features %s (%v): want auth on", body, err)
			}
		}
	}

	b := uitest.Start(t)
	b.Do(30*time.Second, chromedp.Navigate(c.URL()+"/#/explore?q=vector(1)"),
		uitest.WaitFor(`!!document.querySelector('#banner form.token input')`),
		chromedp.SendKeys(chromedp.CSS(`#banner form.token input`), "s3cret-token"),
		chromedp.Evaluate[chromedp.Void](`delete document.body.dataset.ready`),
	)
	b.ResetErrors() // the refused requests before the token was given
	b.Do(30*time.Second, chromedp.Click(chromedp.CSS(`#banner form.token button`)), uitest.WaitReady("explore"))
	if got := uitest.Eval[string](b, `document.querySelector('.result').textContent`); !strings.Contains(got, "series (vector)") {
		t.Errorf("explore with the token: %q", got)
	}
	if errs := b.Errors(); len(errs) > 0 {
		t.Errorf("page errors with the token: %v", errs)
	}
}
