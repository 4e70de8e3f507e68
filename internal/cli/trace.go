package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/center/traces"
)

// traceAnswerLimit bounds the answer of the center a trace lookup reads.
const traceAnswerLimit = 64 << 20

func runTrace(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("trace MSGID [flags]", "Looks a message up in the center's trace store by its message id (messaging.message.id)\nand prints its waterfall: each hop, its service and instance, its offset and duration,\nerrors, untraced gaps and spans whose parent is missing.", stderr)
	center := fs.String("center", "http://"+config.DefaultListen, "URL of the monitoring center")
	asJSON := fs.Bool("json", false, "print the center's JSON answer instead of the waterfall")
	tokenFile := fs.String("bearer-token-file", "", "file holding the center's bearer token, when its API is protected")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on the center after this long")
	// Flags may come before or after the message id.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() == 0 {
		return usagef("trace: give the message id: imwatch trace MSGID [--center URL] [--json]")
	}
	msgID := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("trace: unexpected argument %q (one message id at a time)", fs.Arg(0))
	}
	u, err := url.Parse(strings.TrimRight(*center, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--center %q: want the center's URL, e.g. http://127.0.0.1:7070", *center)
	}
	token := ""
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("read bearer token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	body, err := fetchTraces(u.String(), msgID, token, *timeout)
	if err != nil {
		return err
	}
	var list traces.TraceList
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("the center's answer is not a trace list: %w", err)
	}
	if len(list.Traces) == 0 {
		return fmt.Errorf("no trace of message %q in the center at %s (was it sent with tracing on and sampled, and within the trace retention?)", msgID, u)
	}
	if *asJSON {
		var out bytes.Buffer
		if err := json.Indent(&out, body, "", "  "); err != nil {
			return err
		}
		out.WriteByte('\n')
		_, err := stdout.Write(out.Bytes())
		return err
	}
	return writeWaterfall(stdout, msgID, list)
}

func fetchTraces(center, msgID, token string, timeout time.Duration) ([]byte, error) {
	q := url.Values{"msg_id": {msgID}, "limit": {"20"}}
	req, err := http.NewRequest(http.MethodGet, center+"/api/traces?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the center: %w (is it running at %s? see --center)", err, center)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, traceAnswerLimit))
	if err != nil {
		return nil, fmt.Errorf("read the center's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return nil, fmt.Errorf("the center answered %s: %s", resp.Status, e.Error)
	}
	return body, nil
}

const (
	barWidth  = 40
	nameWidth = 34
	svcWidth  = 34
)

// writeWaterfall prints each trace of the message: a header, then a line
// per span in tree order, a line per gap before the span it precedes.
func writeWaterfall(w io.Writer, msgID string, list traces.TraceList) error {
	var b strings.Builder
	fmt.Fprintf(&b, "message %s: %d trace%s\n", msgID, len(list.Traces), plural(len(list.Traces)))
	for _, t := range list.Traces {
		b.WriteString("\n")
		writeTrace(&b, t)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeTrace(b *strings.Builder, t traces.TraceAnswer) {
	r := t.Root
	fmt.Fprintf(b, "trace %s  %s  %s ms  %d span%s  %s\n", t.TraceID, r.Start, fmtMs(r.DurationMs), r.SpanCount, plural(r.SpanCount), strings.Join(r.Services, ", "))
	var notes []string
	if r.ErrorCount > 0 {
		notes = append(notes, fmt.Sprintf("%d error%s", r.ErrorCount, plural(r.ErrorCount)))
	}
	if r.MissingParents > 0 {
		notes = append(notes, fmt.Sprintf("%d span%s with a missing parent", r.MissingParents, plural(r.MissingParents)))
	}
	if n := len(t.Gaps); n > 0 {
		notes = append(notes, fmt.Sprintf("%d untraced gap%s", n, plural(n)))
	}
	if !r.IsRoot {
		notes = append(notes, "root span missing")
	}
	if t.Truncated {
		notes = append(notes, fmt.Sprintf("only the first %d spans shown", len(t.Spans)))
	}
	if len(notes) > 0 {
		status := "BROKEN"
		if !t.Broken {
			status = "NOTE"
		}
		fmt.Fprintf(b, "%s: %s\n", status, strings.Join(notes, ", "))
	}
	total := r.DurationMs
	scale := func(ms float64) int {
		if total <= 0 {
			return 0
		}
		return int(ms / total * barWidth)
	}
	bar := func(off, dur float64, fill string) string {
		start := min(scale(off), barWidth-1)
		n := max(1, min(scale(off+dur)-start, barWidth-start))
		return strings.Repeat(" ", start) + strings.Repeat(fill, n) + strings.Repeat(" ", barWidth-start-n)
	}
	fmt.Fprintf(b, "\n%10s %10s  %-*s %-*s |%-*s|\n", "offset ms", "dur ms", nameWidth, "hop", svcWidth, "service / instance", barWidth, "0"+strings.Repeat(" ", max(0, barWidth-len(fmtMs(total))-4))+fmtMs(total)+" ms")
	gapBefore := map[string][]traces.Gap{}
	for _, g := range t.Gaps {
		gapBefore[g.BeforeSpanID] = append(gapBefore[g.BeforeSpanID], g)
	}
	start, _ := time.Parse(time.RFC3339Nano, r.Start)
	names := map[string]string{}
	for _, s := range t.Spans {
		names[s.SpanID] = s.Name
	}
	for _, s := range t.Spans {
		for _, g := range gapBefore[s.SpanID] {
			gs, _ := time.Parse(time.RFC3339Nano, g.Start)
			off := float64(gs.Sub(start).Nanoseconds()) / 1e6
			label := fmt.Sprintf("%s~ gap: no span", strings.Repeat("  ", s.Depth))
			fmt.Fprintf(b, "%10s %10s  %-*s %-*s |%s| untraced between %s and %s\n", fmtMs(off), fmtMs(g.DurationMs), nameWidth, fit(label, nameWidth), svcWidth, "",
				bar(off, g.DurationMs, "░"), names[g.AfterSpanID], names[g.BeforeSpanID])
		}
		var note []string
		if s.Status == "error" {
			msg := "ERROR"
			if s.StatusMessage != "" {
				msg += ": " + s.StatusMessage
			}
			note = append(note, msg)
		}
		if s.MissingParent {
			note = append(note, "MISSING PARENT "+s.ParentSpanID)
		}
		svc := s.Service
		if s.Instance != "" {
			svc += " " + s.Instance
		}
		line := fmt.Sprintf("%10s %10s  %-*s %-*s |%s|", fmtMs(s.OffsetMs), fmtMs(s.DurationMs), nameWidth, fit(strings.Repeat("  ", s.Depth)+s.Name, nameWidth),
			svcWidth, fit(svc, svcWidth), bar(s.OffsetMs, s.DurationMs, "█"))
		if len(note) > 0 {
			line += " " + strings.Join(note, "; ")
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
}

func fmtMs(ms float64) string { return fmt.Sprintf("%.3f", ms) }

// fit pads or cuts s to n columns.
func fit(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s + strings.Repeat(" ", n-utf8.RuneCountInString(s))
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
