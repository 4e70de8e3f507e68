// Package config is the configuration of the monitoring center: typed YAML,
// decoded strictly (an unknown key is an error naming its line), defaults in
// one place (Default), and a Validate per section.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// DefaultListen is where the center listens unless told otherwise.
const DefaultListen = "127.0.0.1:7070"

// Config is the whole configuration of the center.
type Config struct {
	Storage            Storage       `yaml:"storage"`
	Scrape             Scrape        `yaml:"scrape"`
	RuleFiles          []string      `yaml:"rule_files"`
	EvaluationInterval Duration      `yaml:"evaluation_interval"`
	Alerting           Alerting      `yaml:"alerting"`
	RemoteWrite        []RemoteWrite `yaml:"remote_write"`
	Receiver           Receiver      `yaml:"remote_write_receiver"`
	Query              Query         `yaml:"query"`
	Auth               Auth          `yaml:"auth"`
	Traces             Traces        `yaml:"traces"`

	// File is the file the config was loaded from ("" for Default()); a
	// reload reads it again.
	File string `yaml:"-"`
	// Listen is the address of the HTTP listener; it comes from the command
	// line and cannot change on reload.
	Listen string `yaml:"-"`
}

// Storage is where and for how long samples are kept.
type Storage struct {
	Path           string   `yaml:"path"`
	Retention      Duration `yaml:"retention"`
	RetentionSize  ByteSize `yaml:"retention_size"`
	WALCompression string   `yaml:"wal_compression"`
	// WALFsync makes every write fsync the write-ahead log before it is
	// acknowledged, so an acknowledged sample survives a power loss and not
	// only a crash of the process.
	WALFsync bool `yaml:"wal_fsync"`
	// OutOfOrderWindow accepts samples up to this much older than the
	// newest one of their series.
	OutOfOrderWindow Duration `yaml:"out_of_order_window"`
}

// Scrape is the scraping of static targets.
type Scrape struct {
	Interval      Duration `yaml:"interval"`
	Timeout       Duration `yaml:"timeout"`
	SampleLimit   int      `yaml:"sample_limit"`
	BodySizeLimit ByteSize `yaml:"body_size_limit"`
	Targets       []Target `yaml:"targets"`
}

// Target is one /metrics endpoint to scrape.
type Target struct {
	URL    string            `yaml:"url"`
	Labels map[string]string `yaml:"labels"`
}

// Alerting is where firing and resolved alerts go.
type Alerting struct {
	Alertmanagers []string `yaml:"alertmanagers"`
	Webhooks      []string `yaml:"webhooks"`
	Timeout       Duration `yaml:"timeout"`
	QueueCapacity int      `yaml:"queue_capacity"`
	// WebhookRepeatInterval is how often a webhook hears again about an
	// alert that keeps firing (Alertmanager's repeat_interval).
	WebhookRepeatInterval Duration `yaml:"webhook_repeat_interval"`
	// ExternalURL is the center's URL as users reach it; alerts link to it.
	ExternalURL string `yaml:"external_url"`
}

// RemoteWrite is one Prometheus-compatible store the center writes onward to.
type RemoteWrite struct {
	URL               string   `yaml:"url"`
	BearerTokenFile   string   `yaml:"bearer_token_file"`
	Timeout           Duration `yaml:"timeout"`
	QueueCapacity     int      `yaml:"queue_capacity"`
	MaxSamplesPerSend int      `yaml:"max_samples_per_send"`
	BatchSendDeadline Duration `yaml:"batch_send_deadline"`
	MinBackoff        Duration `yaml:"min_backoff"`
	MaxBackoff        Duration `yaml:"max_backoff"`

	// BearerToken is read from BearerTokenFile when the config is loaded.
	BearerToken string `yaml:"-"`
}

// Receiver bounds what the remote-write receiver at /api/v1/write accepts.
type Receiver struct {
	MaxBodySize        ByteSize `yaml:"max_body_size"`
	MaxDecodedSize     ByteSize `yaml:"max_decoded_size"`
	MaxSamplesPerWrite int      `yaml:"max_samples_per_write"`
	// MaxConcurrent bounds the writes being read and stored at once (and so
	// their memory); more wait for their turn.
	MaxConcurrent int `yaml:"max_concurrent"`
}

// Query bounds PromQL queries.
type Query struct {
	Timeout       Duration `yaml:"timeout"`
	MaxSamples    int      `yaml:"max_samples"`
	MaxConcurrent int      `yaml:"max_concurrent"`
	LookbackDelta Duration `yaml:"lookback_delta"`
}

// Traces is the trace side: the OTLP receiver, the trace store, the
// metrics derived from spans and the detection of broken traces.
type Traces struct {
	// Path of the trace store; "" means a directory "traces" beside storage.path.
	Path          string   `yaml:"path"`
	Retention     Duration `yaml:"retention"`
	RetentionSize ByteSize `yaml:"retention_size"`
	// WALFsync fsyncs the trace write-ahead log before an OTLP request is
	// answered, so that acknowledged spans survive a power loss too.
	WALFsync     bool     `yaml:"wal_fsync"`
	HeadMaxSpans int      `yaml:"head_max_spans"`
	HeadMaxAge   Duration `yaml:"head_max_age"`

	MaxBodySize        ByteSize `yaml:"max_body_size"`
	MaxDecodedSize     ByteSize `yaml:"max_decoded_size"`
	MaxSpansPerRequest int      `yaml:"max_spans_per_request"`
	MaxSpanSize        ByteSize `yaml:"max_span_size"`
	QueueSpans         int      `yaml:"queue_spans"`
	MaxConcurrent      int      `yaml:"max_concurrent"`
	// GRPCListen is the address of the OTLP/gRPC receiver; off when empty.
	GRPCListen string `yaml:"grpc_listen"`

	MissingParentGrace Duration `yaml:"missing_parent_grace"`
	GapThreshold       Duration `yaml:"gap_threshold"`

	MetricsInterval  Duration `yaml:"metrics_interval"`
	MetricsMaxSeries int      `yaml:"metrics_max_series"`
}

// TracesPath is where the trace store lives.
func (c *Config) TracesPath() string {
	if c.Traces.Path != "" {
		return c.Traces.Path
	}
	return filepath.Join(filepath.Dir(c.Storage.Path), "traces")
}

// Auth protects the HTTP API with a bearer token; off when no file is given.
type Auth struct {
	BearerTokenFile string `yaml:"bearer_token_file"`

	// BearerToken is read from BearerTokenFile when the config is loaded.
	BearerToken string `yaml:"-"`
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Storage: Storage{
			Path:           "./imwatch-data/tsdb",
			Retention:      Duration(15 * 24 * time.Hour),
			WALCompression: "snappy",
		},
		Scrape: Scrape{
			Interval:      Duration(5 * time.Second),
			Timeout:       Duration(4 * time.Second),
			SampleLimit:   50000,
			BodySizeLimit: 32 << 20,
		},
		EvaluationInterval: Duration(15 * time.Second),
		Alerting: Alerting{
			Timeout:               Duration(10 * time.Second),
			QueueCapacity:         10000,
			WebhookRepeatInterval: Duration(4 * time.Hour),
		},
		Receiver: Receiver{
			MaxBodySize:        16 << 20,
			MaxDecodedSize:     64 << 20,
			MaxSamplesPerWrite: 1_000_000,
			MaxConcurrent:      16,
		},
		Query: Query{
			Timeout:       Duration(2 * time.Minute),
			MaxSamples:    50_000_000,
			MaxConcurrent: 20,
			LookbackDelta: Duration(5 * time.Minute),
		},
		Traces: Traces{
			Retention:          Duration(72 * time.Hour),
			RetentionSize:      10 << 30,
			WALFsync:           true,
			HeadMaxSpans:       500_000,
			HeadMaxAge:         Duration(2 * time.Minute),
			MaxBodySize:        16 << 20,
			MaxDecodedSize:     64 << 20,
			MaxSpansPerRequest: 100_000,
			MaxSpanSize:        256 << 10,
			QueueSpans:         200_000,
			MaxConcurrent:      8,
			MissingParentGrace: Duration(30 * time.Second),
			GapThreshold:       Duration(10 * time.Millisecond),
			MetricsInterval:    Duration(15 * time.Second),
			MetricsMaxSeries:   10_000,
		},
		Listen: DefaultListen,
	}
}

// DefaultRemoteWrite holds the defaults of each remote_write entry.
var DefaultRemoteWrite = RemoteWrite{
	Timeout:           Duration(30 * time.Second),
	QueueCapacity:     100_000,
	MaxSamplesPerSend: 2000,
	BatchSendDeadline: Duration(5 * time.Second),
	MinBackoff:        Duration(30 * time.Millisecond),
	MaxBackoff:        Duration(5 * time.Second),
}

// FieldError is a problem with one key of the configuration.
type FieldError struct {
	Path string // e.g. "scrape.targets[0].url"
	Line int    // 0 when unknown
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config line %d: %s: %s", e.Line, e.Path, e.Msg)
	}
	return fmt.Sprintf("config: %s: %s", e.Path, e.Msg)
}

func fieldErr(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every section and returns all problems found.
func (c *Config) Validate() error {
	var errs []error
	errs = append(errs, c.Storage.Validate()...)
	errs = append(errs, c.Scrape.Validate()...)
	for i, p := range c.RuleFiles {
		if _, err := filepath.Match(p, ""); err != nil || p == "" {
			errs = append(errs, fieldErr(fmt.Sprintf("rule_files[%d]", i), "%q is not a valid file pattern", p))
		}
	}
	if c.EvaluationInterval <= 0 {
		errs = append(errs, fieldErr("evaluation_interval", "must be positive"))
	}
	errs = append(errs, c.Alerting.Validate()...)
	seen := map[string]bool{}
	for i := range c.RemoteWrite {
		p := fmt.Sprintf("remote_write[%d]", i)
		errs = append(errs, c.RemoteWrite[i].Validate(p)...)
		if seen[c.RemoteWrite[i].URL] {
			errs = append(errs, fieldErr(p+".url", "%q is listed twice", c.RemoteWrite[i].URL))
		}
		seen[c.RemoteWrite[i].URL] = true
	}
	errs = append(errs, c.Receiver.Validate()...)
	errs = append(errs, c.Query.Validate()...)
	errs = append(errs, c.Traces.Validate()...)
	return errors.Join(errs...)
}

// Validate checks the storage section.
func (s *Storage) Validate() []error {
	var errs []error
	if strings.TrimSpace(s.Path) == "" {
		errs = append(errs, fieldErr("storage.path", "must not be empty"))
	}
	if s.Retention < 0 {
		errs = append(errs, fieldErr("storage.retention", "must not be negative"))
	}
	if s.RetentionSize < 0 {
		errs = append(errs, fieldErr("storage.retention_size", "must not be negative"))
	}
	switch s.WALCompression {
	case "none", "snappy", "zstd":
	default:
		errs = append(errs, fieldErr("storage.wal_compression", "%q: want none, snappy or zstd", s.WALCompression))
	}
	if s.OutOfOrderWindow < 0 {
		errs = append(errs, fieldErr("storage.out_of_order_window", "must not be negative"))
	}
	return errs
}

// Validate checks the scrape section.
func (s *Scrape) Validate() []error {
	var errs []error
	if s.Interval <= 0 {
		errs = append(errs, fieldErr("scrape.interval", "must be positive"))
	}
	if s.Timeout <= 0 {
		errs = append(errs, fieldErr("scrape.timeout", "must be positive"))
	} else if s.Timeout > s.Interval && s.Interval > 0 {
		errs = append(errs, fieldErr("scrape.timeout", "%s is longer than scrape.interval %s", s.Timeout, s.Interval))
	}
	if s.SampleLimit <= 0 {
		errs = append(errs, fieldErr("scrape.sample_limit", "must be positive"))
	}
	if s.BodySizeLimit <= 0 {
		errs = append(errs, fieldErr("scrape.body_size_limit", "must be positive"))
	}
	seen := map[string]bool{}
	for i, t := range s.Targets {
		p := fmt.Sprintf("scrape.targets[%d]", i)
		if err := t.Validate(p); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[t.URL] {
			errs = append(errs, fieldErr(p+".url", "%q is listed twice", t.URL))
		}
		seen[t.URL] = true
	}
	return errs
}

// Validate checks one scrape target; path names it in errors.
func (t *Target) Validate(path string) error {
	if err := checkHTTPURL(t.URL); err != nil {
		return fieldErr(path+".url", "%v", err)
	}
	for k, v := range t.Labels {
		if !model.LegacyValidation.IsValidLabelName(k) {
			return fieldErr(path+".labels", "%q is not a valid label name", k)
		}
		if strings.HasPrefix(k, "__") {
			return fieldErr(path+".labels", "%q: names starting with __ are reserved", k)
		}
		if k == "instance" && v == "" {
			return fieldErr(path+".labels", "instance must not be empty")
		}
	}
	return nil
}

// Validate checks the alerting section.
func (a *Alerting) Validate() []error {
	var errs []error
	for i, u := range a.Alertmanagers {
		if err := checkHTTPURL(u); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("alerting.alertmanagers[%d]", i), "%v", err))
		}
	}
	for i, u := range a.Webhooks {
		if err := checkHTTPURL(u); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("alerting.webhooks[%d]", i), "%v", err))
		}
	}
	if a.Timeout <= 0 {
		errs = append(errs, fieldErr("alerting.timeout", "must be positive"))
	}
	if a.QueueCapacity <= 0 {
		errs = append(errs, fieldErr("alerting.queue_capacity", "must be positive"))
	}
	if a.WebhookRepeatInterval <= 0 {
		errs = append(errs, fieldErr("alerting.webhook_repeat_interval", "must be positive"))
	}
	if a.ExternalURL != "" {
		if err := checkHTTPURL(a.ExternalURL); err != nil {
			errs = append(errs, fieldErr("alerting.external_url", "%v", err))
		}
	}
	return errs
}

// Validate checks one remote_write entry; path names it in errors.
func (r *RemoteWrite) Validate(path string) []error {
	var errs []error
	if err := checkHTTPURL(r.URL); err != nil {
		errs = append(errs, fieldErr(path+".url", "%v", err))
	}
	if r.Timeout <= 0 {
		errs = append(errs, fieldErr(path+".timeout", "must be positive"))
	}
	if r.QueueCapacity <= 0 {
		errs = append(errs, fieldErr(path+".queue_capacity", "must be positive"))
	}
	if r.MaxSamplesPerSend <= 0 {
		errs = append(errs, fieldErr(path+".max_samples_per_send", "must be positive"))
	} else if r.MaxSamplesPerSend > r.QueueCapacity && r.QueueCapacity > 0 {
		errs = append(errs, fieldErr(path+".max_samples_per_send", "%d is more than queue_capacity %d", r.MaxSamplesPerSend, r.QueueCapacity))
	}
	if r.BatchSendDeadline <= 0 {
		errs = append(errs, fieldErr(path+".batch_send_deadline", "must be positive"))
	}
	if r.MinBackoff <= 0 {
		errs = append(errs, fieldErr(path+".min_backoff", "must be positive"))
	}
	if r.MaxBackoff < r.MinBackoff {
		errs = append(errs, fieldErr(path+".max_backoff", "%s is less than min_backoff %s", r.MaxBackoff, r.MinBackoff))
	}
	return errs
}

// Validate checks the remote_write_receiver section.
func (r *Receiver) Validate() []error {
	var errs []error
	if r.MaxBodySize <= 0 {
		errs = append(errs, fieldErr("remote_write_receiver.max_body_size", "must be positive"))
	}
	if r.MaxDecodedSize < r.MaxBodySize {
		errs = append(errs, fieldErr("remote_write_receiver.max_decoded_size", "%s is less than max_body_size %s", r.MaxDecodedSize, r.MaxBodySize))
	}
	if r.MaxSamplesPerWrite <= 0 {
		errs = append(errs, fieldErr("remote_write_receiver.max_samples_per_write", "must be positive"))
	}
	if r.MaxConcurrent <= 0 {
		errs = append(errs, fieldErr("remote_write_receiver.max_concurrent", "must be positive"))
	}
	return errs
}

// Validate checks the query section.
func (q *Query) Validate() []error {
	var errs []error
	if q.Timeout <= 0 {
		errs = append(errs, fieldErr("query.timeout", "must be positive"))
	}
	if q.MaxSamples <= 0 {
		errs = append(errs, fieldErr("query.max_samples", "must be positive"))
	}
	if q.MaxConcurrent <= 0 {
		errs = append(errs, fieldErr("query.max_concurrent", "must be positive"))
	}
	if q.LookbackDelta <= 0 {
		errs = append(errs, fieldErr("query.lookback_delta", "must be positive"))
	}
	return errs
}

// Validate checks the traces section.
func (t *Traces) Validate() []error {
	var errs []error
	positive := func(key string, ok bool) {
		if !ok {
			errs = append(errs, fieldErr("traces."+key, "must be positive"))
		}
	}
	if t.Retention < 0 {
		errs = append(errs, fieldErr("traces.retention", "must not be negative (0: no time limit)"))
	}
	if t.RetentionSize < 0 {
		errs = append(errs, fieldErr("traces.retention_size", "must not be negative (0: no size limit)"))
	}
	positive("head_max_spans", t.HeadMaxSpans > 0)
	positive("head_max_age", t.HeadMaxAge > 0)
	positive("max_body_size", t.MaxBodySize > 0)
	if t.MaxDecodedSize < t.MaxBodySize {
		errs = append(errs, fieldErr("traces.max_decoded_size", "%s is less than max_body_size %s", t.MaxDecodedSize, t.MaxBodySize))
	}
	positive("max_spans_per_request", t.MaxSpansPerRequest > 0)
	positive("max_span_size", t.MaxSpanSize > 0)
	if t.QueueSpans < t.MaxSpansPerRequest {
		errs = append(errs, fieldErr("traces.queue_spans", "%d is less than max_spans_per_request %d: the biggest request could never get in", t.QueueSpans, t.MaxSpansPerRequest))
	}
	positive("max_concurrent", t.MaxConcurrent > 0)
	if t.GRPCListen != "" {
		if _, _, err := net.SplitHostPort(t.GRPCListen); err != nil {
			errs = append(errs, fieldErr("traces.grpc_listen", "%q: want host:port, e.g. 127.0.0.1:4317", t.GRPCListen))
		}
	}
	positive("missing_parent_grace", t.MissingParentGrace > 0)
	positive("gap_threshold", t.GapThreshold > 0)
	positive("metrics_interval", t.MetricsInterval > 0)
	positive("metrics_max_series", t.MetricsMaxSeries > 0)
	return errs
}

func checkHTTPURL(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: want an http:// or https:// URL", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	return nil
}
