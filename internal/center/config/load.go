package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds a config file; a bigger one is surely a mistake.
const MaxFileSize = 4 << 20

// ErrInvalid is wrapped by every error about the content of a config.
var ErrInvalid = errors.New("invalid config")

// Parse decodes a config from YAML: defaults for what is left out, an error
// naming the line for an unknown key or a value of the wrong type, then
// Validate. It reads no files; Load does.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	lines, err := DecodeStrict(data, &cfg)
	if err != nil {
		return cfg, err
	}
	for i := range cfg.RemoteWrite {
		applyRemoteWriteDefaults(&cfg.RemoteWrite[i])
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("%w: %w", ErrInvalid, withLines(err, lines))
	}
	return cfg, nil
}

// Load reads the config file at path with Parse, resolves relative paths in
// it against the file's directory, reads the token files and parses the
// rule files, so that a config Load accepts is one the center can run.
func Load(path string) (Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	cfg, err := Parse(data)
	if err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	cfg.File = path
	if err := cfg.Resolve(filepath.Dir(path)); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Resolve makes the relative paths of c relative to dir, reads the token
// files and parses the rule files.
func (c *Config) Resolve(dir string) error {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.Storage.Path = abs(c.Storage.Path)
	c.Traces.Path = abs(c.Traces.Path)
	for i := range c.RuleFiles {
		c.RuleFiles[i] = abs(c.RuleFiles[i])
	}
	var errs []error
	if c.Auth.BearerTokenFile != "" {
		c.Auth.BearerTokenFile = abs(c.Auth.BearerTokenFile)
		tok, err := readToken(c.Auth.BearerTokenFile)
		if err != nil {
			errs = append(errs, fieldErr("auth.bearer_token_file", "%v", err))
		}
		c.Auth.BearerToken = tok
	}
	for i := range c.RemoteWrite {
		rw := &c.RemoteWrite[i]
		if rw.BearerTokenFile == "" {
			continue
		}
		rw.BearerTokenFile = abs(rw.BearerTokenFile)
		tok, err := readToken(rw.BearerTokenFile)
		if err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("remote_write[%d].bearer_token_file", i), "%v", err))
		}
		rw.BearerToken = tok
	}
	if _, err := c.RuleFilePaths(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// RuleFilePaths expands the rule_files patterns and parses every file,
// returning the files in order or every error found.
func (c *Config) RuleFilePaths() ([]string, error) {
	var files []string
	var errs []error
	seen := map[string]bool{}
	p := parser.NewParser(parser.Options{})
	quiet := slog.New(slog.DiscardHandler)
	for i, pat := range c.RuleFiles {
		matches, err := filepath.Glob(pat)
		if err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("rule_files[%d]", i), "%q: %v", pat, err))
			continue
		}
		sort.Strings(matches)
		for _, m := range matches {
			if seen[m] {
				continue
			}
			seen[m] = true
			if _, perrs := rulefmt.ParseFile(m, false, model.UTF8Validation, p, quiet); len(perrs) > 0 {
				for _, e := range perrs {
					errs = append(errs, fmt.Errorf("rule file: %w", e))
				}
				continue
			}
			files = append(files, m)
		}
	}
	return files, errors.Join(errs...)
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

func applyRemoteWriteDefaults(r *RemoteWrite) {
	d := DefaultRemoteWrite
	if r.Timeout == 0 {
		r.Timeout = d.Timeout
	}
	if r.QueueCapacity == 0 {
		r.QueueCapacity = d.QueueCapacity
	}
	if r.MaxSamplesPerSend == 0 {
		r.MaxSamplesPerSend = d.MaxSamplesPerSend
	}
	if r.BatchSendDeadline == 0 {
		r.BatchSendDeadline = d.BatchSendDeadline
	}
	if r.MinBackoff == 0 {
		r.MinBackoff = d.MinBackoff
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = d.MaxBackoff
	}
}

// withLines adds the line numbers known for the paths of FieldErrors in err.
func withLines(err error, lines map[string]int) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	for _, e := range list {
		var fe *FieldError
		if errors.As(e, &fe) && fe.Line == 0 {
			fe.Line = lineOf(fe.Path, lines)
		}
	}
	return err
}

// lineOf finds the line of path or of its nearest parent.
func lineOf(path string, lines map[string]int) int {
	for p := path; p != ""; {
		if l, ok := lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// maxDepth bounds the recursion of check on hostile input.
const maxDepth = 64

// check walks the YAML tree alongside the Go type t, reporting unknown keys
// and values of the wrong shape with their line, and recording the line of
// every path in lines.
func check(n *yaml.Node, t reflect.Type, path string, lines map[string]int, depth int) []error {
	if depth > maxDepth {
		return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "nested too deeply"}}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil
		}
		return check(n.Content[0], t, path, lines, depth+1)
	case yaml.AliasNode:
		return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "YAML aliases are not supported here; write the value out"}}
	}
	if path != "" {
		lines[path] = n.Line
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // keeps the default
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		v := reflect.New(t).Interface().(yaml.Unmarshaler)
		if err := v.UnmarshalYAML(n); err != nil {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: err.Error()}}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "want a mapping of keys to values, got " + describe(n)}}
		}
		fields := yamlFields(t)
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok || k.Kind != yaml.ScalarNode {
				errs = append(errs, unknownKey(k, path, fields))
				continue
			}
			errs = append(errs, check(v, f.Type, join(path, k.Value), lines, depth+1)...)
		}
		return errs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "want a list, got " + describe(n)}}
		}
		var errs []error
		for i, e := range n.Content {
			errs = append(errs, check(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), lines, depth+1)...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "want a mapping, got " + describe(n)}}
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				errs = append(errs, &FieldError{Path: orRoot(path), Line: k.Line, Msg: "a key must be a plain string"})
				continue
			}
			errs = append(errs, check(v, t.Elem(), join(path, k.Value), lines, depth+1)...)
		}
		return errs
	default:
		if n.Kind != yaml.ScalarNode {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: "want a " + kindName(t) + ", got " + describe(n)}}
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			return []error{&FieldError{Path: orRoot(path), Line: n.Line, Msg: fmt.Sprintf("want a %s, got %q", kindName(t), n.Value)}}
		}
		return nil
	}
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f
	}
	return m
}

func unknownKey(k *yaml.Node, path string, fields map[string]reflect.StructField) error {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	known := make([]string, 0, len(fields))
	for name := range fields {
		known = append(known, name)
	}
	sort.Strings(known)
	msg := fmt.Sprintf("unknown key %q %s", k.Value, where)
	if s := closest(k.Value, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	} else {
		msg += " (known: " + strings.Join(known, ", ") + ")"
	}
	return &unknownKeyError{line: k.Line, msg: msg}
}

type unknownKeyError struct {
	line int
	msg  string
}

func (e *unknownKeyError) Error() string { return fmt.Sprintf("config line %d: %s", e.line, e.msg) }

// closest returns the known name nearest to s when it is near enough to be a typo.
func closest(s string, known []string) string {
	best, bestD := "", 1<<30
	for _, k := range known {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	if bestD <= 2 || (bestD <= 4 && bestD*3 <= len(s)) {
		return best
	}
	for _, k := range known { // "scrape_interval" for "interval"
		if len(k) >= 4 && strings.Contains(s, k) {
			return k
		}
	}
	return ""
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "whole number"
	case reflect.Float64, reflect.Float32:
		return "number"
	case reflect.String:
		return "string"
	}
	return t.String()
}

// yamlError turns a YAML syntax error into "config line N: ...".
func yamlError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: ")
	if strings.HasPrefix(s, "line ") {
		return "config " + s
	}
	return "config: " + s
}
