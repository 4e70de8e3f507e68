package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/fault"
)

const faultUsage = `Usage:
  imwatch fault add KIND --instance NAME [--hop HOP] [--percent P] [--delay D] [--duration D]
  imwatch fault list [--all] [--json]
  imwatch fault clear ID...
each with [--center URL] [--bearer-token-file FILE]

KIND      drop (--percent of the messages at --hop, default 100), latency (--delay
          at --hop, default 1s), stop (stop the instance, restart it when the
          fault ends), blackhole (a gateway acks sends, delivers nothing)
HOP       gateway.receive, gateway.push (gateways); logic.handle, store.append (logic nodes)
NAME      gw-1, gw-2, logic-1 in imwatch up ('imwatch fault list' shows them)
--duration  the fault ends by itself after it (default 5m, at most 1h)`

// faultAnswerLimit bounds the center's answer the command reads.
const faultAnswerLimit = 4 << 20

func runFault(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, faultUsage)
		if len(args) == 0 {
			return usagef("fault: say add, list or clear")
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "add":
		return runFaultAdd(args[1:], stdout, stderr)
	case "list":
		return runFaultList(args[1:], stdout, stderr)
	case "clear":
		return runFaultClear(args[1:], stdout, stderr)
	}
	return usagef("unknown command %q\n%s", "fault "+args[0], faultUsage)
}

// centerFlags reach the center's API.
type centerFlags struct {
	center, tokenFile string
}

func (c *centerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.center, "center", "http://"+config.DefaultListen, "URL of the monitoring center")
	fs.StringVar(&c.tokenFile, "bearer-token-file", "", "file holding the center's bearer token, when its API is protected")
}

// call sends one request to the center's API and decodes a 2xx answer into
// out; another answer becomes an error with the center's message.
func (c *centerFlags) call(method, path string, body []byte, out any) error {
	u, err := url.Parse(strings.TrimRight(c.center, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--center %q: want the center's URL, e.g. http://127.0.0.1:7070", c.center)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String()+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.tokenFile != "" {
		tok, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return fmt.Errorf("read bearer token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("center %s: %w (is it running? --center says where)", u.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, faultAnswerLimit))
	if err != nil {
		return fmt.Errorf("center %s: %w", u.Host, err)
	}
	if resp.StatusCode == http.StatusNotFound && strings.HasPrefix(path, "/api/faults") && !bytes.Contains(data, []byte(`"errorType"`)) {
		return fmt.Errorf("center %s takes no faults (run imwatch up, whose center does)", u.Host)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("center refused (%s): %s", resp.Status, e.Error)
		}
		return fmt.Errorf("center answered %s", resp.Status)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("center's answer: %w", err)
	}
	return nil
}

func runFaultAdd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fault add KIND [flags]", "Injects a fault into the IM through the center.\n\n"+faultUsage, stderr)
	var cf centerFlags
	cf.register(fs)
	instance := fs.String("instance", "", "the gateway or logic node (required)")
	hop := fs.String("hop", "", "drop, latency: the hop")
	percent := fs.Float64("percent", 0, "drop: share of the messages dropped, more than 0 up to 100 (default 100)")
	delay := fs.Duration("delay", 0, "latency: added per message (default 1s, at most 30s)")
	duration := fs.Duration("duration", 0, "the fault ends by itself after this (default 5m, 1s to 1h)")
	asJSON := fs.Bool("json", false, "print the center's JSON answer")
	kind, err := parseWithArg(fs, args, "fault add: give the kind: drop, latency, stop or blackhole")
	if err != nil {
		return err
	}
	spec := fault.Spec{Kind: fault.Kind(kind), Instance: *instance, Percent: *percent, Delay: fault.Duration(*delay), Duration: fault.Duration(*duration)}
	if spec.Hop, err = fault.ParseHop(*hop); err != nil {
		return usagef("--hop: %v", err)
	}
	check := spec
	if err := check.Normalize(); err != nil { // the center checks again, and the instance
		return usagef("%v", strings.TrimPrefix(err.Error(), fault.ErrInvalid.Error()+": "))
	}
	body, _ := json.Marshal(spec)
	var out struct {
		Fault fault.Fault `json:"fault"`
	}
	if err := cf.call(http.MethodPost, "/api/faults", body, &out); err != nil {
		return err
	}
	if *asJSON {
		return writeIndented(stdout, out)
	}
	f := out.Fault
	fmt.Fprintf(stdout, "fault %s: %s at %s until %s (clear with: imwatch fault clear %s)\n", f.ID, f.What(), f.Where(), f.Until.Local().Format(time.TimeOnly), f.ID)
	return nil
}

// parseWithArg parses flags around one positional argument, which it returns.
func parseWithArg(fs *flag.FlagSet, args []string, missing string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", err
			}
			return "", usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch len(pos) {
	case 0:
		return "", usagef("%s", missing)
	case 1:
		return pos[0], nil
	}
	return "", usagef("unexpected argument %q", pos[1])
}

func runFaultList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fault list [flags]", "Lists the faults in force (--all: and the recent ended ones) and the instances that take faults.", stderr)
	var cf centerFlags
	cf.register(fs)
	all := fs.Bool("all", false, "also the faults that ended")
	asJSON := fs.Bool("json", false, "print the center's JSON answer")
	if err := parse(fs, args); err != nil {
		return err
	}
	path := "/api/faults?state=active"
	if *all {
		path = "/api/faults?state=all"
	}
	var out struct {
		Faults    []fault.Fault    `json:"faults"`
		Instances []fault.Instance `json:"instances"`
	}
	if err := cf.call(http.MethodGet, path, nil, &out); err != nil {
		return err
	}
	if *asJSON {
		return writeIndented(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	if len(out.Faults) == 0 {
		fmt.Fprintln(tw, "no faults in force")
	} else {
		fmt.Fprintln(tw, "ID\tSTATE\tFAULT\tWHERE\tSTART\tUNTIL/END\tAPPLIED")
		for _, f := range out.Faults {
			end := f.Until
			if !f.Active() {
				end = f.End
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", f.ID, f.State, f.What(), f.Where(),
				f.Start.Local().Format(time.TimeOnly), end.Local().Format(time.TimeOnly), f.Applied)
		}
	}
	var names []string
	for _, in := range out.Instances {
		names = append(names, fmt.Sprintf("%s (%s)", in.Name, in.Service))
	}
	if len(names) == 0 {
		names = []string{"none have reported in"}
	}
	fmt.Fprintf(tw, "instances: %s\n", strings.Join(names, ", "))
	return tw.Flush()
}

func runFaultClear(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fault clear ID... [flags]", "Ends faults before their time.", stderr)
	var cf centerFlags
	cf.register(fs)
	var ids []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		ids = append(ids, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(ids) == 0 {
		return usagef("fault clear: give the id of the fault ('imwatch fault list' shows them)")
	}
	var errs []error
	for _, id := range ids {
		var out struct {
			Fault fault.Fault `json:"fault"`
		}
		if err := cf.call(http.MethodDelete, "/api/faults/"+url.PathEscape(id), nil, &out); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		fmt.Fprintf(stdout, "fault %s: %s (%s at %s)\n", out.Fault.ID, out.Fault.State, out.Fault.What(), out.Fault.Where())
	}
	return errors.Join(errs...)
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
