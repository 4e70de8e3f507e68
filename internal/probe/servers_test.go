package probe

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imwatch/imwatch/internal/im/imtest"
)

// server is a real server (mosquitto, prosody) run by a test as a child
// process on a loopback port, stoppable and restartable on the same port.
type server struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	addr string
	mu   sync.Mutex
	out  bytes.Buffer
	cmd  *exec.Cmd
	exit chan struct{} // closed when the process has exited
}

func (s *server) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Env = append(os.Environ(), s.env...)
	s.cmd.Stdout, s.cmd.Stderr = &lockedWriter{s: s}, &lockedWriter{s: s}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.name, err)
	}
	exit := make(chan struct{})
	s.exit = exit
	go func() { _ = s.cmd.Wait(); close(exit) }()
	imtest.Eventually(s.t, 30*time.Second, func() error {
		select {
		case <-exit:
			s.t.Fatalf("%s exited: %s", s.name, s.log())
		default:
		}
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}

func (s *server) stop() {
	if s.cmd == nil || s.exit == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
	s.exit = nil
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

type lockedWriter struct{ s *server }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if os.Getenv("IMWATCH_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return w.s.out.Write(p)
}

// findBinary is imtest.RequireBinary that also looks in the sbin
// directories, which are not on every user's PATH.
func findBinary(t testing.TB, name, pkg string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return imtest.RequireBinary(t, name, pkg)
}

// startMosquitto runs the Debian mosquitto on a free port. With users, it
// requires a login and takes those user:password pairs; else anonymous.
func startMosquitto(t testing.TB, users map[string]string) *server {
	t.Helper()
	bin := findBinary(t, "mosquitto", "mosquitto")
	dir := t.TempDir()
	port := imtest.FreePort(t)
	conf := fmt.Sprintf("listener %d 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n", port)
	if os.Geteuid() == 0 {
		conf += "user root\n" // else it turns into user mosquitto, who cannot read the test's files
	}
	if len(users) > 0 {
		pw := filepath.Join(dir, "passwd")
		writeFile(t, dir, "passwd", "")
		passwd := findBinary(t, "mosquitto_passwd", "mosquitto")
		for u, p := range users {
			if out, err := exec.Command(passwd, "-b", pw, u, p).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		conf += "allow_anonymous false\npassword_file " + pw + "\n"
	} else {
		conf += "allow_anonymous true\n"
	}
	cfg := writeFile(t, dir, "mosquitto.conf", conf)
	s := &server{t: t, name: "mosquitto", bin: bin, args: []string{"-c", cfg}, addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// noSecrets fails if any of secrets appears in text (logs, metrics, errors).
func noSecrets(t testing.TB, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s contains a password", what)
		}
	}
}

// prosody is a real Prosody started by a test, with its probe accounts.
type prosody struct {
	*server
	ca string // the self-signed certificate clients trust
}

// startProsody runs the Debian prosody on a free port for the domain
// localhost, STARTTLS required with a self-signed certificate, and
// registers users (user -> password) with prosodyctl.
func startProsody(t testing.TB, users map[string]string) *prosody {
	t.Helper()
	bin := findBinary(t, "prosody", "prosody")
	ctl := findBinary(t, "prosodyctl", "prosody")
	openssl := imtest.RequireBinary(t, "openssl", "openssl")
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "localhost.crt"), filepath.Join(dir, "localhost.key")
	if out, err := exec.Command(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
		"-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost").CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v: %s", err, out)
	}
	port := imtest.FreePort(t)
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`-- written by the imwatch probe tests
prosody_user = %q
prosody_group = %q
run_as_root = true
pidfile = %q
data_path = %q
certificates = %q
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping" }
modules_disabled = { "s2s" }
c2s_ports = { %d }
c2s_interfaces = { "127.0.0.1" }
c2s_direct_tls_ports = { }
s2s_ports = { }
log = { { levels = { min = "warn" }, to = "console" } }
authentication = "internal_hashed"
c2s_require_encryption = true
ssl = { certificate = %q; key = %q }
VirtualHost "localhost"
`, u.Username, g.Name, filepath.Join(dir, "prosody.pid"), filepath.Join(dir, "data"), dir, port, crt, key)
	cfg := writeFile(t, dir, "prosody.cfg.lua", conf)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, pw := range users {
		local, domain, _ := strings.Cut(name, "@")
		if out, err := exec.Command(ctl, "--config", cfg, "register", local, domain, pw).CombinedOutput(); err != nil {
			t.Fatalf("prosodyctl register %s: %v: %s", local, err, out)
		}
	}
	s := &server{t: t, name: "prosody", bin: bin, args: []string{"--config", cfg, "-F"}, addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.start()
	t.Cleanup(s.stop)
	return &prosody{server: s, ca: crt}
}
