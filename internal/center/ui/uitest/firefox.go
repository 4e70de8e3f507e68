package uitest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// Firefox is a headless Firefox driven over WebDriver BiDi, the W3C
// protocol Firefox speaks natively (no geckodriver): enough of it to load
// a page, evaluate JavaScript and collect the page's errors.
type Firefox struct {
	t    testing.TB
	conn *websocket.Conn
	cmd  *exec.Cmd
	ctx  string // the browsing context (tab)

	next    atomic.Int64
	mu      sync.Mutex
	waiting map[int64]chan bidiReply
	errs    []string
}

type bidiReply struct {
	Type    string          `json:"type"`
	ID      int64           `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   string          `json:"error"`
	Message string          `json:"message"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

// StartFirefox launches Debian's firefox-esr headless with a fresh profile
// (skipping without it, failing under IMWATCH_INTEGRATION=1); it is closed
// at cleanup.
func StartFirefox(t testing.TB) *Firefox {
	t.Helper()
	bin := imtest.RequireBinary(t, "firefox-esr", "firefox-esr")
	dir := t.TempDir()
	port := imtest.FreePort(t)
	cmd := exec.Command(bin, "--headless", "--no-remote", "--profile", filepath.Join(dir, "profile"),
		"--remote-debugging-port", strconv.Itoa(port), "--window-size=1400,1000", "about:blank")
	if err := os.MkdirAll(filepath.Join(dir, "profile"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "HOME="+dir, "MOZ_CRASHREPORTER_DISABLE=1")
	logf, err := os.Create(filepath.Join(dir, "firefox.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start firefox: %v", err)
	}
	f := &Firefox{t: t, cmd: cmd, waiting: map[int64]chan bidiReply{}}
	t.Cleanup(func() {
		if f.conn != nil {
			_ = f.conn.Close(websocket.StatusNormalClosure, "")
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its content processes too
		_ = cmd.Wait()
	})
	imtest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://127.0.0.1:%d/session", port), nil)
		if err != nil {
			return err
		}
		c.SetReadLimit(64 << 20)
		f.conn = c
		return nil
	})
	go f.read()
	if _, err := f.call("session.new", map[string]any{"capabilities": map[string]any{}}); err != nil {
		t.Fatalf("firefox session: %v", err)
	}
	if _, err := f.call("session.subscribe", map[string]any{"events": []string{"log.entryAdded", "browsingContext.userPromptOpened"}}); err != nil {
		t.Fatalf("firefox subscribe: %v", err)
	}
	tree, err := f.call("browsingContext.getTree", map[string]any{})
	if err != nil {
		t.Fatalf("firefox tree: %v", err)
	}
	var tr struct {
		Contexts []struct {
			Context string `json:"context"`
		} `json:"contexts"`
	}
	if err := json.Unmarshal(tree, &tr); err != nil || len(tr.Contexts) == 0 {
		t.Fatalf("firefox: no browsing context in %s (%v)", tree, err)
	}
	f.ctx = tr.Contexts[0].Context
	return f
}

func (f *Firefox) read() {
	for {
		_, data, err := f.conn.Read(context.Background())
		if err != nil {
			f.mu.Lock()
			for id, ch := range f.waiting {
				ch <- bidiReply{Type: "error", Error: "connection", Message: err.Error()}
				delete(f.waiting, id)
			}
			f.mu.Unlock()
			return
		}
		var r bidiReply
		if json.Unmarshal(data, &r) != nil {
			continue
		}
		f.mu.Lock()
		if r.Type == "event" {
			f.event(r)
		} else if ch, ok := f.waiting[r.ID]; ok {
			ch <- r
			delete(f.waiting, r.ID)
		}
		f.mu.Unlock()
	}
}

// event records the page's errors; called with f.mu held.
func (f *Firefox) event(r bidiReply) {
	switch r.Method {
	case "log.entryAdded":
		var e struct {
			Level string `json:"level"`
			Type  string `json:"type"`
			Text  string `json:"text"`
		}
		if json.Unmarshal(r.Params, &e) == nil && (e.Level == "error" || e.Level == "warn") {
			f.errs = append(f.errs, fmt.Sprintf("%s %s: %s", e.Type, e.Level, e.Text))
		}
	case "browsingContext.userPromptOpened":
		f.errs = append(f.errs, "dialog opened: "+string(r.Params))
		go func() {
			_, _ = f.call("browsingContext.handleUserPrompt", map[string]any{"context": f.ctx, "accept": false})
		}()
	}
}

func (f *Firefox) call(method string, params any) (json.RawMessage, error) {
	id := f.next.Add(1)
	ch := make(chan bidiReply, 1)
	f.mu.Lock()
	f.waiting[id] = ch
	f.mu.Unlock()
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := f.conn.Write(ctx, websocket.MessageText, msg); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.Type == "error" {
			return nil, fmt.Errorf("%s: %s: %s", method, r.Error, r.Message)
		}
		return r.Result, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: no answer within 60s", method)
	}
}

// Open loads url and waits until body[data-ready=page].
func (f *Firefox) Open(url, page string, timeout time.Duration) {
	f.t.Helper()
	if _, err := f.call("browsingContext.navigate", map[string]any{"context": f.ctx, "url": url, "wait": "complete"}); err != nil {
		f.t.Fatalf("firefox: %v", err)
	}
	f.WaitFor(fmt.Sprintf(`document.body && document.body.dataset.ready === %q`, page), timeout)
}

// WaitFor polls a JavaScript expression until it is true.
func (f *Firefox) WaitFor(expr string, timeout time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		err := f.eval(expr, &ok)
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("firefox: %s not true within %s (last error %v; page errors %v)", expr, timeout, err, f.Errors())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Eval evaluates expr (awaiting a promise) and decodes its JSON value into out.
func (f *Firefox) Eval(expr string, out any) {
	f.t.Helper()
	if err := f.eval(expr, out); err != nil {
		f.t.Fatalf("firefox: evaluate %s: %v", expr, err)
	}
}

func (f *Firefox) eval(expr string, out any) error {
	// BiDi returns typed remote values; JSON text is the simplest way back.
	res, err := f.call("script.evaluate", map[string]any{
		"expression": fmt.Sprintf(`Promise.resolve(%s).then((v) => JSON.stringify(v))`, expr),
		"target":     map[string]any{"context": f.ctx}, "awaitPromise": true,
	})
	if err != nil {
		return err
	}
	var r struct {
		Type   string `json:"type"`
		Result struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"result"`
		ExceptionDetails struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		return err
	}
	if r.Type == "exception" {
		return errors.New(r.ExceptionDetails.Text)
	}
	if r.Result.Type != "string" {
		return fmt.Errorf("value of type %s", r.Result.Type)
	}
	return json.Unmarshal([]byte(r.Result.Value), out)
}

// Errors are the console errors and warnings and uncaught exceptions of the
// page, and dialogs that opened.
func (f *Firefox) Errors() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.errs {
		// Firefox's own background work on a machine without internet.
		if strings.Contains(e, "RemoteSettings") || strings.Contains(e, "nimbus") {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Screenshot saves the viewport as DIR/name.png.
func (f *Firefox) Screenshot(dir, name string) {
	f.t.Helper()
	res, err := f.call("browsingContext.captureScreenshot", map[string]any{"context": f.ctx, "origin": "document"})
	if err != nil {
		f.t.Fatalf("firefox screenshot: %v", err)
	}
	var r struct {
		Data []byte `json:"data"` // base64 in JSON: decoded by encoding/json
	}
	if err := json.Unmarshal(res, &r); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), r.Data, 0o644); err != nil {
		f.t.Fatal(err)
	}
}
