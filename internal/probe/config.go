package probe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/imwatch/imwatch/internal/center/config"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// DefaultListen is where `imwatch probe` serves /metrics unless told otherwise.
const DefaultListen = "127.0.0.1:9102"

// ErrInvalid is wrapped by every error about the content of a config
// (it is the center's: both configs are read the same way).
var ErrInvalid = config.ErrInvalid

// Config is the whole configuration of a prober.
type Config struct {
	// Location names where this prober runs (a region, a lab); the label
	// location of every metric and the service.instance.id of its spans.
	Location string `yaml:"location"`
	Center   Center `yaml:"center"`
	// Buffer is the directory of the on-disk buffer results wait in until
	// the center takes them.
	Buffer        string          `yaml:"buffer"`
	BufferMaxSize config.ByteSize `yaml:"buffer_max_size"`
	Targets       []Target        `yaml:"targets"`

	// File is the file the config was loaded from; a reload reads it again.
	File string `yaml:"-"`
}

// Center is where results go.
type Center struct {
	// URL is the center's base URL: metrics go to URL/api/v1/write
	// (remote write), spans to URL/v1/traces (OTLP/HTTP). Empty: results
	// stay in the buffer (and on /metrics).
	URL             string          `yaml:"url"`
	BearerTokenFile string          `yaml:"bearer_token_file"`
	Timeout         config.Duration `yaml:"timeout"`
	// PushInterval is how often the metrics are put into the buffer.
	PushInterval config.Duration `yaml:"push_interval"`
	// Traces switches sending spans off (they are still made).
	Traces *bool `yaml:"traces"`

	BearerToken string `yaml:"-"` // read from BearerTokenFile by Load
}

// TracesOn says whether spans go to the center.
func (c Center) TracesOn() bool { return c.Traces == nil || *c.Traces }

// Target is one IM service probed with one protocol.
type Target struct {
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"`
	// Address is host:port (xmpp, mqtt; mqtts:// or ssl:// for MQTT over
	// TLS) or the gateway's ws:// URL (imwatch).
	Address  string          `yaml:"address"`
	Accounts []Account       `yaml:"accounts"`
	Interval config.Duration `yaml:"interval"`
	Timeout  config.Duration `yaml:"timeout"`
	// FreshLogin makes every round log in anew on new connections and log
	// out after it, instead of keeping the connections open between rounds.
	FreshLogin bool `yaml:"fresh_login"`

	// SecretFile or SecretEnv hold the token secret of an imwatch target.
	SecretFile string `yaml:"secret_file"`
	SecretEnv  string `yaml:"secret_env"`

	// StartTLS (default true) requires STARTTLS on XMPP; the server's
	// certificate must be valid for the accounts' domain (or
	// tls.server_name). SASLMechanisms are tried in order (default
	// SCRAM-SHA-256, SCRAM-SHA-1, PLAIN).
	StartTLS       *bool    `yaml:"starttls"`
	SASLMechanisms []string `yaml:"sasl_mechanisms"`

	// MQTTVersion is "5" (default) or "3.1.1"; TopicPrefix is where probe
	// messages are published (default imwatch/probe).
	MQTTVersion string `yaml:"mqtt_version"`
	TopicPrefix string `yaml:"topic_prefix"`

	TLS TLS `yaml:"tls"`

	Secret []byte `yaml:"-"` // read by Load
}

// StartTLSOn says whether an XMPP target requires STARTTLS.
func (t Target) StartTLSOn() bool { return t.StartTLS == nil || *t.StartTLS }

// TLS is how a TLS connection (STARTTLS, mqtts) checks the server.
type TLS struct {
	CAFile             string `yaml:"ca_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Account is one probe account. The password comes from a file or an
// environment variable, never from the config itself.
type Account struct {
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`

	Password Secret `yaml:"-"` // read by Load
}

// Secret is a credential: it prints as "<secret>" so that a log line, an
// error or a %v of a config can never show it.
type Secret string

func (Secret) String() string   { return "<secret>" }
func (Secret) GoString() string { return `"<secret>"` }

// Protocols the prober speaks; each has a driver.
const (
	ProtoIMWatch = "imwatch"
	ProtoXMPP    = "xmpp"
	ProtoMQTT    = "mqtt"
)

// Defaults, in one place.
const (
	DefaultInterval      = 5 * time.Second
	DefaultTimeout       = 3 * time.Second
	DefaultPushInterval  = 5 * time.Second
	DefaultCenterTimeout = 10 * time.Second
	DefaultBufferMaxSize = 256 << 20
	DefaultTopicPrefix   = "imwatch/probe"
	DefaultMQTTVersion   = "5"
	// MaxAccounts bounds the accounts of one target (each holds connections).
	MaxAccounts = 100_000
	// MaxTargets bounds the targets of one prober.
	MaxTargets = 1000
)

// DefaultSASLMechanisms are tried in this order.
var DefaultSASLMechanisms = []string{"SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Location:      "default",
		Center:        Center{Timeout: config.Duration(DefaultCenterTimeout), PushInterval: config.Duration(DefaultPushInterval)},
		Buffer:        "./imwatch-data/probe-buffer",
		BufferMaxSize: DefaultBufferMaxSize,
	}
}

func applyTargetDefaults(t *Target) {
	if t.Interval == 0 {
		t.Interval = config.Duration(DefaultInterval)
	}
	if t.Timeout == 0 {
		t.Timeout = config.Duration(min(DefaultTimeout, t.Interval.D()))
	}
	switch t.Protocol {
	case ProtoXMPP:
		if len(t.SASLMechanisms) == 0 {
			t.SASLMechanisms = append([]string(nil), DefaultSASLMechanisms...)
		}
	case ProtoMQTT:
		if t.MQTTVersion == "" {
			t.MQTTVersion = DefaultMQTTVersion
		}
		if t.TopicPrefix == "" {
			t.TopicPrefix = DefaultTopicPrefix
		}
	}
}

// Parse decodes a config from YAML: defaults for what is left out, an error
// naming the line for an unknown key or a value of the wrong type, then
// Validate. It reads no files; Load does.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	lines, err := config.DecodeStrict(data, &cfg)
	if err != nil {
		return cfg, err
	}
	for i := range cfg.Targets {
		applyTargetDefaults(&cfg.Targets[i])
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("%w: %w", ErrInvalid, config.WithLines(err, lines))
	}
	return cfg, nil
}

// Load reads the config file at path with Parse, makes relative paths in it
// relative to the file's directory and reads every credential, so that a
// config Load accepts is one the prober can run.
func Load(path string) (Config, error) {
	data, err := config.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	cfg, err := Parse(data)
	if err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	cfg.File = path
	if err := cfg.Resolve(filepath.Dir(path), os.LookupEnv); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

var fieldErr = config.FieldErrorf

// Resolve makes the relative paths of c relative to dir and reads the
// credentials from their files and environment variables (through env).
// An error names the key and the file or variable, never the credential.
func (c *Config) Resolve(dir string, env func(string) (string, bool)) error {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.Buffer = abs(c.Buffer)
	var errs []error
	if c.Center.BearerTokenFile != "" {
		c.Center.BearerTokenFile = abs(c.Center.BearerTokenFile)
		tok, err := readCredential(c.Center.BearerTokenFile)
		if err != nil {
			errs = append(errs, fieldErr("center.bearer_token_file", "%v", err))
		}
		c.Center.BearerToken = tok
	}
	for i := range c.Targets {
		t := &c.Targets[i]
		path := fmt.Sprintf("targets[%d]", i)
		t.TLS.CAFile = abs(t.TLS.CAFile)
		if t.Protocol == ProtoIMWatch {
			sec, err := credential(path+".secret", abs(t.SecretFile), t.SecretEnv, env)
			if err != nil {
				errs = append(errs, err)
			} else if len(sec) < 16 {
				errs = append(errs, fieldErr(path+".secret_file", "the token secret must be at least 16 characters"))
			}
			t.SecretFile = abs(t.SecretFile)
			t.Secret = []byte(sec)
		}
		for j := range t.Accounts {
			a := &t.Accounts[j]
			if a.PasswordFile == "" && a.PasswordEnv == "" {
				continue
			}
			a.PasswordFile = abs(a.PasswordFile)
			pw, err := credential(fmt.Sprintf("%s.accounts[%d].password", path, j), a.PasswordFile, a.PasswordEnv, env)
			if err != nil {
				errs = append(errs, err)
			}
			a.Password = Secret(pw)
		}
	}
	return errors.Join(errs...)
}

// credential reads a secret from file, else from the environment variable.
func credential(path, file, envName string, env func(string) (string, bool)) (string, error) {
	if file != "" {
		s, err := readCredential(file)
		if err != nil {
			return "", fieldErr(path+"_file", "%v", err)
		}
		return s, nil
	}
	s, ok := env(envName)
	if !ok || strings.TrimSpace(s) == "" {
		return "", fieldErr(path+"_env", "environment variable %s is not set or empty", envName)
	}
	return strings.TrimSpace(s), nil
}

// readCredential reads a credential file. Its errors name the file, never
// what is in it.
func readCredential(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return "", fmt.Errorf("cannot read %s: %v", path, pe.Err)
		}
		return "", fmt.Errorf("cannot read %s", path)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("cannot read %s", path)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	envRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	topicRE = regexp.MustCompile(`^[^#+\x00]{1,200}$`)
)

// Validate checks every section and returns all problems found, each
// naming its key.
func (c *Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(c.Location) {
		errs = append(errs, fieldErr("location", "%q: want 1 to 64 characters of A-Z a-z 0-9 _ . -", c.Location))
	}
	if c.Center.URL != "" {
		u, err := url.Parse(c.Center.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fieldErr("center.url", "%q: want the center's base URL, e.g. http://127.0.0.1:7070", c.Center.URL))
		}
	}
	if c.Center.Timeout <= 0 {
		errs = append(errs, fieldErr("center.timeout", "must be positive"))
	}
	if c.Center.PushInterval < config.Duration(100*time.Millisecond) {
		errs = append(errs, fieldErr("center.push_interval", "%s: must be at least 100ms", c.Center.PushInterval))
	}
	if c.Buffer == "" {
		errs = append(errs, fieldErr("buffer", "give the directory of the on-disk buffer"))
	}
	if c.BufferMaxSize < 4*segmentSize {
		errs = append(errs, fieldErr("buffer_max_size", "%s: must be at least %s", c.BufferMaxSize, config.ByteSize(4*segmentSize)))
	}
	if len(c.Targets) > MaxTargets {
		errs = append(errs, fieldErr("targets", "%d targets: at most %d", len(c.Targets), MaxTargets))
	}
	seen := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		path := fmt.Sprintf("targets[%d]", i)
		if seen[t.Name] {
			errs = append(errs, fieldErr(path+".name", "%q: another target has that name", t.Name))
		}
		seen[t.Name] = true
		errs = append(errs, t.validate(path)...)
	}
	return errors.Join(errs...)
}

func (t *Target) validate(path string) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fieldErr(path+"."+key, format, args...))
	}
	if !nameRE.MatchString(t.Name) {
		add("name", "%q: want 1 to 64 characters of A-Z a-z 0-9 _ . -", t.Name)
	}
	if _, ok := drivers[t.Protocol]; !ok {
		add("protocol", "%q: want one of %s", t.Protocol, strings.Join(driverNames(), ", "))
	}
	if t.Interval < config.Duration(100*time.Millisecond) {
		add("interval", "%s: must be at least 100ms", t.Interval)
	}
	// A timeout longer than the interval lets rounds of one link overlap:
	// that is what lets a message overtaken by a later one count as
	// reordered rather than late.
	if t.Timeout <= 0 || t.Timeout > 10*t.Interval || t.Timeout > config.Duration(5*time.Minute) {
		add("timeout", "%s: must be positive, at most 10 intervals (%s) and at most 5m", t.Timeout, 10*t.Interval)
	}
	if len(t.Accounts) > MaxAccounts {
		add("accounts", "%d accounts: at most %d", len(t.Accounts), MaxAccounts)
	}
	users := map[string]bool{}
	for j, a := range t.Accounts {
		ap := fmt.Sprintf("accounts[%d]", j)
		if a.User == "" {
			add(ap+".user", "give the account's user name")
		}
		if users[a.User] {
			add(ap+".user", "%q is listed twice", a.User)
		}
		users[a.User] = true
		if a.PasswordFile != "" && a.PasswordEnv != "" {
			add(ap, "give password_file or password_env, not both")
		}
		if a.PasswordEnv != "" && !envRE.MatchString(a.PasswordEnv) {
			add(ap+".password_env", "%q is not an environment variable name", a.PasswordEnv)
		}
	}
	if t.SecretEnv != "" && !envRE.MatchString(t.SecretEnv) {
		add("secret_env", "%q is not an environment variable name", t.SecretEnv)
	}
	switch t.Protocol {
	case ProtoIMWatch:
		u, err := url.Parse(t.Address)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			add("address", "%q: want the gateway's WebSocket URL, e.g. ws://127.0.0.1:7080/ws", t.Address)
		}
		if len(t.Secret) == 0 && (t.SecretFile == "") == (t.SecretEnv == "") {
			add("secret_file", "give the token secret in secret_file or secret_env (one of them)")
		}
		for j, a := range t.Accounts {
			if !protocol.ValidUser(a.User) {
				add(fmt.Sprintf("accounts[%d].user", j), "%q: an imwatch user is 1 to 64 characters of A-Z a-z 0-9 _ -", a.User)
			}
		}
	case ProtoXMPP:
		if _, _, err := net.SplitHostPort(t.Address); err != nil {
			add("address", "%q: want host:port of the XMPP server's client port, e.g. 127.0.0.1:5222", t.Address)
		}
		if len(t.Accounts) == 0 {
			add("accounts", "an XMPP target needs one or two accounts (user@domain with a password)")
		}
		for j, a := range t.Accounts {
			if !strings.Contains(a.User, "@") || strings.Contains(a.User, "/") {
				add(fmt.Sprintf("accounts[%d].user", j), "%q: want a bare JID such as probe1@example.org", a.User)
			}
			if a.PasswordFile == "" && a.PasswordEnv == "" {
				add(fmt.Sprintf("accounts[%d]", j), "an XMPP account needs password_file or password_env")
			}
		}
		for j, m := range t.SASLMechanisms {
			if _, ok := saslMechanisms[m]; !ok {
				add(fmt.Sprintf("sasl_mechanisms[%d]", j), "%q: want SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN", m)
			}
		}
	case ProtoMQTT:
		if _, _, err := splitMQTTAddress(t.Address); err != nil {
			add("address", "%q: want host:port, or mqtts://host:port for TLS", t.Address)
		}
		if t.MQTTVersion != "5" && t.MQTTVersion != "3.1.1" {
			add("mqtt_version", "%q: want \"5\" or \"3.1.1\"", t.MQTTVersion)
		}
		if !topicRE.MatchString(t.TopicPrefix) {
			add("topic_prefix", "%q: want a topic without wildcards (+ #)", t.TopicPrefix)
		}
	}
	if t.Protocol != ProtoIMWatch && (t.SecretFile != "" || t.SecretEnv != "") {
		add("secret_file", "only imwatch targets take a token secret")
	}
	return errs
}

// splitMQTTAddress returns whether the address asks for TLS and its host:port.
func splitMQTTAddress(addr string) (tls bool, hostport string, err error) {
	switch {
	case strings.HasPrefix(addr, "mqtts://"), strings.HasPrefix(addr, "ssl://"), strings.HasPrefix(addr, "tls://"):
		_, hostport, _ = strings.Cut(addr, "://")
		tls = true
	case strings.HasPrefix(addr, "mqtt://"), strings.HasPrefix(addr, "tcp://"):
		_, hostport, _ = strings.Cut(addr, "://")
	default:
		hostport = addr
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return false, "", err
	}
	return tls, hostport, nil
}
