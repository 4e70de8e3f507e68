// Package ui is the center's web UI: plain HTML, CSS and ES modules embedded
// in the binary, served at / and /ui/, reading the center's own HTTP APIs
// from the browser. Nothing is fetched from anywhere else.
package ui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"sort"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Features are the APIs the pages use that not every center has; the pages
// ask for them first so that they never call a route that is not there.
type Features struct {
	Traces        bool `json:"traces"`         // GET /api/traces, /api/traces/{id}
	ProbeFailures bool `json:"probe_failures"` // GET /api/probes/failures
	Faults        bool `json:"faults"`         // GET /api/faults
	Auth          bool `json:"auth"`           // the API wants a bearer token
	// UptimeS is how long the center has run, in seconds: in its first
	// minute the pages refresh every 2 s, so that the first data shows
	// within seconds of `imwatch up`, not at the next 15 s refresh.
	UptimeS float64 `json:"uptime_s"`
}

// Options are what the UI needs to know of the center serving it.
type Options struct {
	// Has reports whether the center serves method and path (the UI's
	// feature check); nil: none of the optional APIs.
	Has func(method, path string) bool
	// Auth reports whether the API wants a bearer token now.
	Auth func() bool
}

type asset struct {
	body  []byte
	etag  string
	ctype string
}

// Handler serves the UI's pages and assets.
type Handler struct {
	opts    Options
	assets  map[string]asset // by path under static/, e.g. "js/app.js"
	index   *template.Template
	modules []string // every module, preloaded by the page in one go
	started time.Time
}

// New reads the embedded assets once.
func New(opts Options) (*Handler, error) {
	h := &Handler{opts: opts, assets: map[string]asset{}, started: time.Now()}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		ctype := mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) { // not left to the host's mime tables
		case ".js":
			ctype = "text/javascript; charset=utf-8"
		case ".css":
			ctype = "text/css; charset=utf-8"
		case ".html":
			ctype = "text/html; charset=utf-8"
		case ".svg":
			ctype = "image/svg+xml"
		}
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		h.assets[strings.TrimPrefix(p, "static/")] = asset{body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ctype}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ui assets: %w", err)
	}
	idx, ok := h.assets["index.html"]
	if !ok {
		return nil, fmt.Errorf("ui assets: no index.html")
	}
	if h.index, err = template.New("index.html").Parse(string(idx.body)); err != nil {
		return nil, fmt.Errorf("ui assets: %w", err)
	}
	for p := range h.assets {
		if strings.HasSuffix(p, ".js") {
			h.modules = append(h.modules, "/ui/"+p)
		}
	}
	sort.Strings(h.modules)
	return h, nil
}

// Register mounts the UI: the page at GET /, the assets under GET /ui/, and
// GET /ui/features.json. None of them needs the bearer token: they hold no
// data; the pages send the token to the API.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", h.serveIndex)
	mux.HandleFunc("GET /ui/features.json", h.serveFeatures)
	mux.HandleFunc("GET /ui/{path...}", func(w http.ResponseWriter, r *http.Request) { h.serveAsset(w, r, r.PathValue("path")) })
}

// Features reports the optional APIs of the center now.
func (h *Handler) Features() Features {
	has := func(p string) bool { return h.opts.Has != nil && h.opts.Has(http.MethodGet, p) }
	return Features{
		Traces:        has("/api/traces") && has("/api/traces/0af7651916cd43dd8448eb211c80319c"),
		ProbeFailures: has("/api/probes/failures"),
		Faults:        has("/api/faults"),
		Auth:          h.opts.Auth != nil && h.opts.Auth(),
		UptimeS:       time.Since(h.started).Seconds(),
	}
}

func (h *Handler) serveFeatures(w http.ResponseWriter, _ *http.Request) {
	setSecurityHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(h.Features())
}

// serveIndex writes the page with the features in it and a preload of every
// module, so that the browser fetches them at once rather than one import
// level after the other, and asks for no features.json before the first query.
func (h *Handler) serveIndex(w http.ResponseWriter, _ *http.Request) {
	feats, _ := json.Marshal(h.Features())
	var buf bytes.Buffer
	if err := h.index.Execute(&buf, struct {
		Features string
		Modules  []string
	}{string(feats), h.modules}); err != nil {
		http.Error(w, "ui: "+err.Error(), http.StatusInternalServerError)
		return
	}
	setSecurityHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

func (h *Handler) serveAsset(w http.ResponseWriter, r *http.Request, p string) {
	a, ok := h.assets[p]
	if !ok || p == "index.html" {
		http.NotFound(w, r)
		return
	}
	setSecurityHeaders(w)
	w.Header().Set("Content-Type", a.ctype)
	w.Header().Set("ETag", a.etag)
	w.Header().Set("Cache-Control", "no-cache") // revalidate: cheap with the ETag, never stale after an upgrade
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

// The pages build their DOM with textContent only; the policy is a second
// wall: no inline script, no script or connection to another origin, no
// framing.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func setSecurityHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Security-Policy", contentSecurityPolicy)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("X-Frame-Options", "DENY")
}
