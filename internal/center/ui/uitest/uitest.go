// Package uitest drives the center's web UI in a real headless Chromium
// (Debian's chromium) from Go tests, through chromedp: it records console
// errors, uncaught exceptions, failed loads and dialogs, and keeps
// screenshots as test artifacts.
package uitest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// Flags are what Chromium needs on this kind of machine: no sandbox (root in
// a container), no GPU, and none of its own network traffic, without which
// its connections get refused.
var Flags = []chromedp.ExecAllocatorOption{
	chromedp.Headless,
	chromedp.NoSandbox,
	chromedp.DisableGPU,
	chromedp.NoFirstRun,
	chromedp.NoDefaultBrowserCheck,
	chromedp.Flag("disable-quic", true),
	chromedp.Flag("disable-background-networking", true),
	chromedp.Flag("disable-component-update", true),
	chromedp.Flag("disable-sync", true),
	chromedp.Flag("disable-extensions", true),
	chromedp.Flag("disable-dev-shm-usage", true),
	chromedp.WindowSize(1400, 1000),
}

// Browser is one headless Chromium with one tab.
type Browser struct {
	t   testing.TB
	Ctx context.Context

	mu      sync.Mutex
	errs    []string // console errors and warnings, exceptions, failed loads
	dialogs []string
}

// Start launches Chromium (skipping the test without it, failing under
// IMWATCH_INTEGRATION=1) with a fresh profile; it is closed at cleanup.
func Start(t testing.TB) *Browser {
	t.Helper()
	bin := imtest.RequireBinary(t, "chromium", "chromium")
	return StartBinary(t, bin)
}

// StartBinary is Start with the Chromium binary given.
func StartBinary(t testing.TB, bin string) *Browser {
	t.Helper()
	opts := append([]chromedp.ExecAllocatorOption{chromedp.ExecPath(bin), chromedp.UserDataDir(t.TempDir())}, Flags...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &Browser{t: t}
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(b.onEvent))
	b.Ctx = ctx
	if err := chromedp.Do(ctx); err != nil { // starts the browser, bound to ctx, not to a timeout
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium %s: %v", bin, err)
	}
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, fmt.Sprintf("%s: %s", ev.Type, ev.Message))
			b.mu.Unlock()
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return b
}

// onEvent runs in the tab's loop: it only records.
func (b *Browser) onEvent(ev any) {
	var msg string
	switch e := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		switch e.Type {
		case runtime.ConsoleAPICalledTypeError, runtime.ConsoleAPICalledTypeWarning, runtime.ConsoleAPICalledTypeAssert:
			var parts []string
			for _, a := range e.Args {
				parts = append(parts, strings.TrimSpace(string(a.Value)+" "+a.Description))
			}
			msg = fmt.Sprintf("console.%s: %s", e.Type, strings.Join(parts, " "))
		}
	case *runtime.EventExceptionThrown:
		d := e.ExceptionDetails
		msg = fmt.Sprintf("uncaught exception at %s:%d: %s", d.URL, d.LineNumber+1, d.Text)
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
	case *log.EventEntryAdded:
		if e.Entry.Level == log.EntryLevelError || e.Entry.Level == log.EntryLevelWarning {
			msg = fmt.Sprintf("browser log %s (%s): %s %s", e.Entry.Level, e.Entry.Source, e.Entry.Text, e.Entry.URL)
		}
	}
	if msg == "" {
		return
	}
	b.mu.Lock()
	b.errs = append(b.errs, msg)
	b.mu.Unlock()
}

// Errors are the console errors and warnings, uncaught exceptions and failed
// loads seen so far; ResetErrors forgets them.
func (b *Browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func (b *Browser) ResetErrors() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errs = nil
}

// Dialogs are the alert, confirm and prompt dialogs that opened.
func (b *Browser) Dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.dialogs...)
}

// Do runs actions with a timeout, failing the test on error.
func (b *Browser) Do(timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v (page errors: %v)", err, b.Errors())
	}
}

// Open loads url and waits until page (a page's name, such as "overview")
// says it has drawn its data: body[data-ready=page].
func (b *Browser) Open(url, pageName string, timeout time.Duration) {
	b.t.Helper()
	b.Do(timeout, chromedp.Navigate(url), WaitReady(pageName))
}

// Go changes the hash route of the loaded UI and waits for page.
func (b *Browser) Go(hash, pageName string, timeout time.Duration) {
	b.t.Helper()
	b.Do(timeout, chromedp.Evaluate[chromedp.Void](fmt.Sprintf("delete document.body.dataset.ready; location.hash = %q", hash)), WaitReady(pageName))
}

// WaitReady waits for body[data-ready=page], which the UI sets once a page
// has drawn what it fetched.
func WaitReady(pageName string) chromedp.Action[chromedp.Void] {
	return WaitFor(fmt.Sprintf(`document.body && document.body.dataset.ready === %q`, pageName))
}

// WaitFor waits until the JavaScript expression is true; the caller's
// context bounds the wait. It evaluates the expression every 50 ms rather
// than installing a poll in the page, so that a navigation in between (the
// page's execution context replaced) is waited out, not an error.
func WaitFor(expr string) chromedp.Action[chromedp.Void] {
	eval := chromedp.Evaluate[bool](expr)
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		var last error
		for {
			ok, err := eval(ctx, t)
			if err == nil && ok {
				return chromedp.Void{}, nil
			}
			if err != nil {
				last = err
			}
			select {
			case <-ctx.Done():
				if last != nil {
					return chromedp.Void{}, fmt.Errorf("%s: %w (last error: %v)", expr, ctx.Err(), last)
				}
				return chromedp.Void{}, fmt.Errorf("%s: %w", expr, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// Eval evaluates a JavaScript expression (awaiting a promise) into a T,
// failing the test on error.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v (page errors: %v)", expr, err, b.Errors())
	}
	return v
}

// ArtifactsDir is where tests keep screenshots: $IMWATCH_ARTIFACTS/TESTNAME,
// or a temporary directory when IMWATCH_ARTIFACTS is not set.
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	root := os.Getenv("IMWATCH_ARTIFACTS")
	if root == "" {
		return t.TempDir()
	}
	dir := filepath.Join(root, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts dir: %v", err)
	}
	return dir
}

// Screenshot saves the whole page as DIR/name.png and returns its path.
func (b *Browser) Screenshot(dir, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	return p
}
