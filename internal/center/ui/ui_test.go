package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestServesPagesAndAssets(t *testing.T) {
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tc := range []struct {
		path, ctype string
		code        int
		contains    string
	}{
		{"/", "text/html; charset=utf-8", 200, `<script type="module" src="/ui/js/app.js">`},
		{"/", "text/html; charset=utf-8", 200, `<link rel="modulepreload" href="/ui/js/chart.js">`},
		{"/", "text/html; charset=utf-8", 200, `<meta name="imwatch-features" content="{&#34;traces&#34;:false,`},
		{"/ui/js/app.js", "text/javascript; charset=utf-8", 200, "export function href"},
		{"/ui/js/pages/overview.js", "text/javascript; charset=utf-8", 200, "Overview"},
		{"/ui/style.css", "text/css; charset=utf-8", 200, ".chart"},
		{"/ui/features.json", "application/json", 200, `"traces":false`},
		{"/ui/index.html", "", 404, ""},
		{"/ui/nope.js", "", 404, ""},
		{"/ui/../go.mod", "", 404, ""},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		buf := new(strings.Builder)
		_, _ = io.Copy(buf, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.code)
			continue
		}
		if tc.code != 200 {
			continue
		}
		if got := resp.Header.Get("Content-Type"); got != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.ctype)
		}
		if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: no CSP: %q", tc.path, resp.Header.Get("Content-Security-Policy"))
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", tc.path)
		}
		if !strings.Contains(buf.String(), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
	}
}

func TestETagRevalidates(t *testing.T) {
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/js/chart.js", nil))
	etag := rec.Header().Get("ETag")
	if rec.Code != 200 || etag == "" {
		t.Fatalf("first GET: %d, ETag %q", rec.Code, etag)
	}
	req := httptest.NewRequest("GET", "/ui/js/chart.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("GET with If-None-Match: %d, want 304", rec.Code)
	}
}

func TestFeaturesFollowTheRoutes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []string
		want   Features
	}{
		{"none", nil, Features{}},
		{"traces", []string{"GET /api/traces", "GET /api/traces/{id}"}, Features{Traces: true}},
		{"search only", []string{"GET /api/traces"}, Features{}},
		{"everything", []string{"GET /api/traces", "GET /api/traces/{id}", "GET /api/probes/failures", "/api/faults"},
			Features{Traces: true, ProbeFailures: true, Faults: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			for _, r := range tc.routes {
				mux.HandleFunc(r, func(http.ResponseWriter, *http.Request) {})
			}
			h, err := New(Options{Has: func(m, p string) bool {
				r := httptest.NewRequest(m, p, nil)
				_, pat := mux.Handler(r)
				return pat != ""
			}})
			if err != nil {
				t.Fatal(err)
			}
			h.Register(mux)
			got := h.Features()
			if got.UptimeS < 0 || got.UptimeS > 60 {
				t.Errorf("uptime %g s", got.UptimeS)
			}
			got.UptimeS = 0
			if got != tc.want {
				t.Fatalf("features %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestNoInnerHTML: the pages build their DOM from text nodes only; data
// never goes through an HTML parser.
func TestNoInnerHTML(t *testing.T) {
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for p, a := range h.assets {
		if !strings.HasSuffix(p, ".js") {
			continue
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
			if strings.Contains(string(a.body), bad) {
				t.Errorf("%s uses %s", p, bad)
			}
		}
	}
}
